-- POST /app/token with no body, as the original service's README does.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
