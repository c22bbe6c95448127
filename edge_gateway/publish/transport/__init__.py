"""publish/transport"""
