"""Contracts: the parts that make, check and compare a contracts directory (no I/O but files).

``scaffold``  create a directory (envelope, empty registry) and add event types to it
``profiles``  the id profiles an envelope can be made with (light: the CLI's parser)
``models``    compare a pydantic model with a payload schema, or write a schema from one
``building``  build, check and encode the envelopes publish writes (no I/O at all)
``loading``   read a directory and gather every problem in it (the registry's load)
``entries``   the registry's public records: an event type and its versions
``schema_rules``  formats, compiling, refused keywords and error paths of a schema
``fastcheck`` the accepting fast path in front of a payload's compiled validator
"""
