"""HTTP without sockets: framing, routes and handlers, keys, metrics, the OpenAPI document."""
