"""Generated protobuf and gRPC code of the gradwire.v1 contract (see gradwire.proto)."""
