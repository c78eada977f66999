"""Export for TF Serving, a TF Serving-compatible gRPC server (dev/CI) and a gRPC client."""
