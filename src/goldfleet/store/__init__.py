"""The store: the only code that runs qemu-img or touches image files."""

from goldfleet.store.layers import LayerInfo, LayerStore
from goldfleet.store.qemu import QemuImg
from goldfleet.store.volumes import VolumeStore

__all__ = ["LayerInfo", "LayerStore", "QemuImg", "VolumeStore"]
