"""Which access a service gets: :func:`access_for` (from its config) and :func:`container_access`
(a container by name, e.g. one that is stopped while another service is restored)."""

from __future__ import annotations

from ..errors import AccessError
from .capabilities import Access, ContainerControl
from .docker import DockerAccess
from .local import LocalAccess
from .prefix import PrefixAccess

__all__ = ["access_for", "container_access"]


def access_for(service_config) -> Access:
    """Choose the access for a service's config: Docker container/volume, command prefix, or local."""
    container = getattr(service_config, "container", None)
    volume = getattr(service_config, "volume", None)
    prefix = getattr(service_config, "exec_prefix", None)
    if container and prefix:
        raise AccessError("set either container or exec_prefix, not both")
    if container or volume:
        return DockerAccess(container, volume=volume, helper_image=getattr(service_config, "helper_image", None),
                            volume_path=getattr(service_config, "volume_path", None)
                            or getattr(service_config, "data_dir", None))
    if prefix:
        return PrefixAccess(prefix)
    return LocalAccess()


def container_access(name: str) -> ContainerControl:
    """The Docker container ``name`` on this host's engine: is it running, stop it, start it."""
    return DockerAccess(name)
