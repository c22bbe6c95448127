"""publish/encode"""
