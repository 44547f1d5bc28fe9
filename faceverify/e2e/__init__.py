"""The end-to-end ONNX model, photo to embedding in one graph, built from one module per stage
(`detection`: RetinaFace's decoding and NMS; `warp`: landmarks → template crop), each mirroring
the library function it replaces."""
