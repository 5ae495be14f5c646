"""The lab's images: one debootstrap per Debian release, the rest derived from it, reused by tag."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lab.common import ARCHIVE, LAB_FILES, RECIPE_LABEL, LabError, exclusive, remove_container, remove_tree, tail, \
    tar_bytes

BOOKWORM, TRIXIE = "bookworm", "trixie"


@dataclass(frozen=True)
class ImageRecipe:
    """How one lab image is made. Its tag is a digest of the recipe, so a changed recipe rebuilds."""
    repository: str
    suite: str = BOOKWORM                          # the Debian release it is made of
    base: ImageRecipe | None = None                # None: debootstrap a root filesystem
    include: tuple[str, ...] = ()                  # debootstrap --include (base images only)
    script: str = ""                               # file under lab/files/images/, run in a build container
    files: tuple[tuple[str, str], ...] = ()        # (file under lab/files/, absolute path in the image)
    changes: tuple[str, ...] = ()                  # Dockerfile instructions: ENV, CMD
    version: int = 1                               # bump when the code that builds it changes

    @property
    def digest(self) -> str:
        h = hashlib.sha256(repr((self.repository, self.base.reference if self.base else (ARCHIVE, self.suite),
                                 self.include, self.files, self.changes, self.version)).encode())
        for rel in ([f"images/{self.script}"] if self.script else []) + [src for src, _ in self.files]:
            h.update((LAB_FILES / rel).read_bytes())
        return h.hexdigest()[:10]

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.suite}-{self.digest}"


def rootfs(suite: str) -> ImageRecipe:
    return ImageRecipe("gpufleet-lab/rootfs", suite=suite, include=("python3",), changes=('CMD ["bash"]',))


def server(suite: str) -> ImageRecipe:
    """A bare Debian server of `suite`: sshd, sudo, systemd available, no Docker."""
    files = (("relax-docker-ulimits.sh", "/tmp/relax-docker-ulimits"),)
    if suite == TRIXIE:  # its docker-ce is 26, which needs this to start a container inside a lab server
        files += (("docker-allow-ipv6.conf", "/etc/systemd/system/docker.service.d/gpufleet-lab.conf"),)
    return ImageRecipe("gpufleet-lab/server", suite=suite, base=rootfs(suite), script="server.sh",
                       files=files, changes=('CMD ["/sbin/init"]',))


ROOTFS = rootfs(BOOKWORM)
# Stands in for pytorch/pytorch: minimal Debian with python3, no sshd (the tool installs it),
# and the environment the real images carry.
PYTORCH = ImageRecipe("gpufleet-lab/pytorch", base=ROOTFS, changes=(
    "ENV LAB_IMAGE=1",
    "ENV PATH=/opt/lab/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV NVIDIA_REQUIRE_CUDA=cuda>=11.6",
    "ENV CUDA_VERSION=11.6.2",
    'CMD ["bash"]',
))
SERVERS = {BOOKWORM: server(BOOKWORM), TRIXIE: server(TRIXIE)}
SERVER = SERVERS[BOOKWORM]
# apt-cacher-ng (the apt proxy), docker-registry (the registry mirror), python3 (the package mirror's web server)
SERVICES = ImageRecipe("gpufleet-lab/services", base=ROOTFS, script="services.sh",
                       files=(("registry.yml", "/etc/gpufleet-lab/registry.yml"),), changes=('CMD ["bash"]',))
IMAGES = (ROOTFS, rootfs(TRIXIE), PYTORCH, *SERVERS.values(), SERVICES)
BUILD_LOCK = Path("/var/tmp/gpufleet-lab-build.lock")


class ImageBuilder:
    """Builds the lab images that are missing: one debootstrap per release, the rest derived from it."""

    def __init__(self, client, log: Callable[[str], None]):
        self.client, self.log = client, log

    def exists(self, recipe: ImageRecipe) -> bool:
        import docker.errors
        try:
            self.client.images.get(recipe.reference)
            return True
        except docker.errors.ImageNotFound:
            return False

    def ensure_all(self, images: tuple[ImageRecipe, ...] = IMAGES, alongside: Callable[[], None] | None = None) -> list[str]:
        """Build every missing image; `alongside` runs meanwhile (the package mirror). Returns the references built."""
        if all(self.exists(r) for r in images):
            if alongside:
                alongside()
            return []
        # Another lab may be building the same images on this engine right now: take turns.
        with exclusive(BUILD_LOCK, lambda: self.log(f"waiting for another lab build to finish ({BUILD_LOCK})")):
            return self._build_missing(images, alongside)

    def _build_missing(self, images: tuple[ImageRecipe, ...], alongside: Callable[[], None] | None) -> list[str]:
        built = []
        bases = [r for r in images if r.base is None and not self.exists(r)]
        with ThreadPoolExecutor(max_workers=len(bases) + 1) as pool:
            extra = pool.submit(alongside) if alongside else None
            for recipe in pool.map(self._debootstrap, bases):
                built.append(recipe.reference)
            missing = [r for r in images if r.base is not None and not self.exists(r)]
            for recipe in ThreadPoolExecutor(max_workers=max(1, len(missing))).map(self._derive, missing):
                built.append(recipe.reference)
            if extra:
                extra.result()
        for recipe in images:
            self._remove_older_tags(recipe)
        return built

    def _remove_older_tags(self, recipe: ImageRecipe) -> None:
        """Drop tags of earlier recipes of the same release that no container uses any more (in use: kept)."""
        import docker.errors
        for image in self.client.images.list(name=recipe.repository):
            for tag in image.tags:
                if tag.startswith(f"{recipe.repository}:{recipe.suite}-") and tag != recipe.reference:
                    try:
                        self.client.images.remove(tag)
                        self.log(f"removed {tag} (an earlier recipe)")
                    except docker.errors.APIError:
                        pass

    def _debootstrap(self, recipe: ImageRecipe) -> ImageRecipe:
        if os.geteuid() != 0:
            raise LabError(f"building {recipe.reference} needs root (debootstrap); run `fab lab.up` as root once")
        if not shutil.which("debootstrap"):
            raise LabError("debootstrap is not installed; run scripts/ensure-docker.sh (apt-get install debootstrap)")
        self.log(f"building {recipe.reference} with debootstrap (about a minute)")
        root = Path(tempfile.mkdtemp(prefix=f"gpufleet-lab-rootfs-{recipe.suite}-", dir="/var/tmp"))
        try:
            argv = ["debootstrap", "--variant=minbase", f"--include={','.join(recipe.include)}", recipe.suite,
                    str(root), ARCHIVE]
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                raise LabError(f"debootstrap {recipe.suite} exited {proc.returncode}: {tail(proc.stdout)}")
            # An image carries no downloaded packages or package lists, like Debian's own images.
            for leftover in [*root.glob("var/cache/apt/archives/*.deb"), *root.glob("var/lib/apt/lists/*_*")]:
                leftover.unlink()
            self._import(root, recipe)
        finally:
            remove_tree(root)
        return recipe

    def _import(self, root: Path, recipe: ImageRecipe) -> None:
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        repository, tag = recipe.reference.rsplit(":", 1)
        try:
            answer = self.client.api.import_image_from_data(
                iter(lambda: tar.stdout.read(1 << 20), b""), repository=repository, tag=tag,
                changes=[*recipe.changes, f"LABEL {RECIPE_LABEL}={recipe.digest}"])
        finally:
            tar.stdout.close()
            code = tar.wait()
        if code != 0 or "error" in str(answer).lower():
            raise LabError(f"importing {recipe.reference} failed (tar exited {code}): {tail(str(answer))}")

    def _derive(self, recipe: ImageRecipe) -> ImageRecipe:
        repository, tag = recipe.reference.rsplit(":", 1)
        labels = {RECIPE_LABEL: recipe.digest}
        if not recipe.script:
            self.log(f"building {recipe.reference}")
            dockerfile = "\n".join([f"FROM {recipe.base.reference}", *recipe.changes]) + "\n"
            self.client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=recipe.reference,
                                     labels=labels, rm=True, forcerm=True, pull=False)
            return recipe
        self.log(f"building {recipe.reference} (apt-get install in a build container)")
        name = f"gpufleet-lab-build-{repository.rsplit('/', 1)[-1]}-{recipe.suite}"
        remove_container(self.client, name)  # left over from an interrupted build (we hold BUILD_LOCK)
        script = (LAB_FILES / "images" / recipe.script).read_text()
        container = self.client.containers.create(recipe.base.reference, ["sh", "-c", script], name=name,
                                                  network_mode="bridge", environment={"SUITE": recipe.suite})
        try:
            if recipe.files:
                container.put_archive("/", tar_bytes({dest.lstrip("/"): ((LAB_FILES / src).read_bytes(), 0o644, 0)
                                                      for src, dest in recipe.files}))
            container.start()
            status = container.wait(timeout=1200)["StatusCode"]
            if status != 0:
                logs = container.logs(tail=30).decode(errors="replace")
                raise LabError(f"building {recipe.reference}: {recipe.script} exited {status}: {tail(logs)}")
            container.commit(repository=repository, tag=tag,
                             changes=[*recipe.changes, f"LABEL {RECIPE_LABEL}={recipe.digest}"])
        finally:
            container.remove(force=True)
        return recipe
