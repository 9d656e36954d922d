module aos/bench/sse_client

go 1.24
