-- A flood of submits for bench/overload.py: every request a new job (its own jobId), every
-- answer counted by status, and each 503's Retry-After; the figures as one JSON line.
--
--   AOS_FLOOD_RUN   a prefix that makes this run's jobIds unique (default "flood")
--   AOS_FLOOD_PATH  the path to POST to (default: the URL's)
--
-- Headers (the key, the content type) come from wrk's -H.

local run = os.getenv("AOS_FLOOD_RUN") or "flood"
local path = os.getenv("AOS_FLOOD_PATH")
local threads = {}

function setup(thread)
   thread:set("thread_id", #threads)
   threads[#threads + 1] = thread
end

local sent = 0
statuses = {}
retry_after = {}
bare_503 = 0

function request()
   sent = sent + 1
   local body = string.format(
      '{"jobId": "%s-%d-%d", "metadata": {"title": "t", "tags": ["a"]}}',
      run, thread_id, sent)
   return wrk.format("POST", path, nil, body)
end

local function header(headers, name)
   for key, value in pairs(headers) do
      if string.lower(key) == name then
         return value
      end
   end
   return nil
end

function response(status, headers, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
   if status == 503 then
      local value = header(headers, "retry-after")
      if value == nil then
         bare_503 = bare_503 + 1
      else
         retry_after[value] = (retry_after[value] or 0) + 1
      end
   end
end

local function add_all(into, from)
   for key, count in pairs(from) do
      into[key] = (into[key] or 0) + count
   end
end

local function json_counts(counts)
   local parts = {}
   for key, count in pairs(counts) do
      parts[#parts + 1] = string.format('"%s": %d', key, count)
   end
   return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
   local all_statuses, all_retry, all_bare = {}, {}, 0
   for _, thread in ipairs(threads) do
      add_all(all_statuses, thread:get("statuses"))
      add_all(all_retry, thread:get("retry_after"))
      all_bare = all_bare + thread:get("bare_503")
   end
   local e = summary.errors
   io.write(string.format(
      'AOS-FLOOD {"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, '
         .. '"write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
         .. '"statuses": %s, "retry_after": %s, "bare_503": %d}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(99), latency.max,
      json_counts(all_statuses), json_counts(all_retry), all_bare))
end
