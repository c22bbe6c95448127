"""sources/modbus"""
