"""The local lab: real hosts, mirrors and a package mirror on the local Docker engine, for the tool to work on.

Used from the checkout (`fab lab.up`, the integration tests, the benchmark); not part of what
`pip install` gives, and `gpufleet` imports nothing from it. See lab/README.md.
"""
