{
  "targets": [
    {
      "target_name": "strata_sys",
      "sources": ["native/sys.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"]
    },
    {
      "target_name": "strata-sandbox",
      "type": "executable",
      "sources": ["native/sandbox.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "ldflags": ["-static-pie"]
    }
  ]
}
