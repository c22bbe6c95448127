"""sources/opcua"""
