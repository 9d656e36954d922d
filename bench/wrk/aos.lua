-- The request bench/http.py asks for, from the environment; the figures as one JSON line.
--
--   AOS_WRK_METHOD  GET (default) or POST
--   AOS_WRK_BODY    a file whose bytes are every request's body
--   AOS_WRK_PATHS   a file of paths, one a line: each thread cycles through them, each
--                   thread from its own place; without it every request goes to the URL's
--                   path and wrk sends one prebuilt request (no Lua per request)
-- Headers come from wrk's -H. No response() hook: defining one makes wrk parse every body.

local function slurp(path)
   local file = assert(io.open(path, "rb"))
   local data = file:read("*a")
   file:close()
   return data
end

wrk.method = os.getenv("AOS_WRK_METHOD") or "GET"
local body_file = os.getenv("AOS_WRK_BODY")
if body_file then
   wrk.body = slurp(body_file)
end

local paths_file = os.getenv("AOS_WRK_PATHS")
local threads = 0

function setup(thread)
   thread:set("thread_id", threads)
   threads = threads + 1
end

if paths_file then
   local requests, next_index = {}, 0

   function init(args)
      for path in io.lines(paths_file) do
         requests[#requests + 1] = wrk.format(nil, path)
      end
      next_index = (thread_id or 0) * 7919 % #requests
   end

   function request()
      next_index = next_index % #requests + 1
      return requests[next_index]
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'AOS-WRK {"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, '
         .. '"p50_us": %d, "p99_us": %d}\n',
      summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
      latency:percentile(50), latency:percentile(99)))
end
