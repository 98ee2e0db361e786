"""The root of every error stn-deploy raises on purpose; the CLI prints them without traceback."""


class StnDeployError(Exception):
    """Base of each package's own error (ModelError, ExportError, PluginError, SessionError)."""
