"""The GridSample TensorRT plugin: names, build driver, and the CPU build of its kernels."""

from stn_deploy.plugins.errors import PluginBuildError, PluginError, PluginLoadError

__all__ = ["PluginBuildError", "PluginError", "PluginLoadError"]
