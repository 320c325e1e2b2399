"""`ftx image build|pull|push|list|rm|base`: backend images through the Docker API."""

from __future__ import annotations

import time
from collections.abc import Callable

import click
from rich.table import Table

from ftx.core.cli import cli
from ftx.core.console import info, lead, results
from ftx.core.containers.engine import ENGINES, connect
from ftx.core.home import ftx_home

backend_arg = click.argument("backend")
variant_opt = click.option(
    "--variant", default="cpu", show_default=True, help="Image variant: cpu, cuda, ascend."
)
registry_opt = click.option(
    "--registry", help="Registry prefix, HOST[:PORT][/PATH] (default: $FTX_REGISTRY)."
)
engine_opt = click.option(
    "--engine",
    type=click.Choice(ENGINES),
    help="Container engine (default: DOCKER_HOST / the Docker socket, else podman).",
)


def _with_image(fn: Callable) -> Callable:
    return backend_arg(variant_opt(registry_opt(engine_opt(fn))))


@cli.group()
def image() -> None:
    """Backend images: built from the backend's lock, pulled, pushed, listed, removed.

    \b
    Examples:
      ftx image base --engine podman          # Debian + python3.11 base, no registry needed
      ftx image build torch --base localhost/ftx-base:bookworm
      ftx image push torch --registry 127.0.0.1:5000/team
      ftx image pull torch --registry registry.example.com/ml --variant cuda
    """


@image.command()
@_with_image
@click.option(
    "--base", help="Base image (default: $FTX_BASE_IMAGE, else the variant's: python:3.11-slim)."
)
@click.option("--push", "then_push", is_flag=True, help="Push it to the registry afterwards.")
def build(
    backend: str,
    variant: str,
    registry: str | None,
    engine: str | None,
    base: str | None,
    then_push: bool,
) -> None:
    """Build BACKEND's image from docker/BACKEND/Dockerfile and its requirements.lock.

    \b
    Example:
      ftx image build paddle --base localhost/ftx-base:bookworm --push --registry reg:5000/ml
    """
    from ftx.core.containers import images

    ref = images.ImageRef.of(backend, variant, registry)
    with connect(engine) as eng:
        info(lead("Engine", f": {eng.describe()}"))
        log = ftx_home() / "logs" / f"image-{backend}-{variant}.log"
        started = time.time()
        attrs = images.build(eng, ref, base=base, say=info, log=log)
        took = time.time() - started
        if then_push:
            images.push(eng, ref, say=info)
    results.print(f"{ref.name}  {attrs['Id'][:19]}  {attrs['Size'] / 1e9:.2f} GB  {took:.0f} s")


@image.command()
@_with_image
def pull(backend: str, variant: str, registry: str | None, engine: str | None) -> None:
    """Pull BACKEND's image (the tag this ftx and lock name) from the registry.

    \b
    Example:
      ftx image pull torch --registry registry.example.com/ml --variant cuda
    """
    from ftx.core.containers import images
    from ftx.core.errors import FtxError

    ref = images.ImageRef.of(backend, variant, registry)
    with connect(engine) as eng:
        attrs = images.pull(eng, ref, say=info)
    if attrs is None:
        raise FtxError(
            f"{ref.name} could not be pulled",
            where="--registry",
            fix=f"push it first (`ftx image build {backend} --push --registry ...`)",
        )
    results.print(f"{ref.name}  {images.digest_of(attrs)}")


@image.command()
@_with_image
def push(backend: str, variant: str, registry: str | None, engine: str | None) -> None:
    """Push BACKEND's image to the registry (build it first with `ftx image build`).

    \b
    Example:
      ftx image push mindformers --registry 127.0.0.1:5000/team
    """
    from ftx.core.containers import images
    from ftx.core.errors import FtxError

    ref = images.ImageRef.of(backend, variant, registry)
    with connect(engine) as eng:
        if images.find(eng, ref) is None:
            local = images.ImageRef.of(backend, variant, images.LOCAL_REGISTRY)
            if images.find(eng, local) is None:
                raise FtxError(
                    f"there is no {ref.name} (nor {local.name}) to push",
                    where=backend,
                    fix=f"build it: ftx image build {backend} --variant {variant}",
                )
            eng.client.images.get(local.name).tag(ref.repository, ref.tag)
        digest = images.push(eng, ref, say=info)
    results.print(f"{ref.name}  {digest}")


@image.command(name="list")
@click.argument("backend", required=False)
@engine_opt
def list_images(backend: str | None, engine: str | None) -> None:
    """List ftx's backend images (by their io.ftx.* labels).

    \b
    Example:
      ftx image list --engine podman
    """
    from ftx.core.containers import images

    table = Table("image", "variant", "lock", "size", "id")
    with connect(engine) as eng:
        for found in images.ftx_images(eng, backend):
            labels = found.labels
            for tag in found.tags or ["<none>"]:
                table.add_row(
                    tag,
                    labels.get(f"{images.LABEL}.variant", "?"),
                    labels.get(f"{images.LABEL}.lock.sha256", "?")[:12],
                    f"{found.attrs['Size'] / 1e9:.2f} GB",
                    found.short_id,
                )
    results.print(table)


@image.command(name="rm")
@backend_arg
@click.option("--variant", help="Only this variant's images (default: all of BACKEND's).")
@engine_opt
def remove(backend: str, variant: str | None, engine: str | None) -> None:
    """Remove BACKEND's images (every tag ftx built or pulled).

    \b
    Example:
      ftx image rm torch --variant cpu
    """
    from ftx.core.containers import images

    with connect(engine) as eng:
        removed = images.remove(eng, backend, variant)
    for tag in removed:
        results.print(f"removed {tag}")
    if not removed:
        info(f"no {backend} images here")


@image.command()
@engine_opt
@click.option("--mirror", help="Debian mirror (default: the one apt uses here).")
def base(engine: str | None, mirror: str | None) -> None:
    """Make a Debian bookworm + python3.11 base image with debootstrap (no registry needed),
    kept as a tarball under $FTX_HOME/images and imported into the engine.

    \b
    Example:
      ftx image base --engine podman && export FTX_BASE_IMAGE=localhost/ftx-base:bookworm
    """
    from ftx.core.containers.base_image import import_base

    with connect(engine) as eng:
        name = import_base(eng, mirror, say=info)
    results.print(name)
