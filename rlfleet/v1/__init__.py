"""Generated gRPC code for the rlfleet.v1 API (see proto/generate.py); do not edit."""
