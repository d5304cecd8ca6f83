"""Generated protobuf and gRPC code of the open inference protocol (see open_inference.proto)."""
