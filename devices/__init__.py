"""Devices (transport x runtime x settings) and the torch-free on-device runner."""
from vitedge.devices.base import Device, DeviceError, LocalDevice
from vitedge.devices.registry import available_devices, get_device, register_device
from vitedge.devices.runner import MeasureConfig, PlanError, RuntimeMissingError
from vitedge.devices.transports import (AuthError, ConnectionLostError, HostKeyError, NoDeviceError, TransportError,
                                        UnreachableError, available_transports, register_transport)

__all__ = ["Device", "DeviceError", "LocalDevice", "MeasureConfig", "PlanError", "RuntimeMissingError",
           "available_devices", "get_device", "register_device", "TransportError", "HostKeyError", "AuthError",
           "UnreachableError", "ConnectionLostError", "NoDeviceError", "available_transports", "register_transport"]
