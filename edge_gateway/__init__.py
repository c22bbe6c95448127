"""Industrial edge gateway: PLCs (OPC UA, Modbus) to AWS IoT Core / SiteWise through a durable buffer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edge-gateway")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
