"""Errors of the plugins package: building and loading the GridSample plugin libraries."""

from stn_deploy.errors import StnDeployError


class PluginError(StnDeployError):
    """Base of every plugins-package error."""


class PluginBuildError(PluginError):
    """The CUDA/C++ build failed or its tools are missing."""


class PluginLoadError(PluginError):
    """A plugin library could not be found or loaded."""
