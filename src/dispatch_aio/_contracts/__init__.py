"""Contracts: the parts that make, check and compare a contracts directory (no I/O but files).

``scaffold``  create a directory (envelope, empty registry) and add event types to it
``models``    compare a pydantic model with a payload schema, or write a schema from one
``building``  build, check and encode the envelopes publish writes (no I/O at all)
"""
