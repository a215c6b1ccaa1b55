-- Replays pre-signed requests with wrk, each exactly once, and counts non-200 answers.
--
--   wrk -t2 -c16 -d10s -s scripts/bench/replay.lua http://127.0.0.1:PORT -- FILE THREADS [wrap]
--
-- FILE holds one request per line: "GET <path?query>" or "POST <path?query> <form body>" (a bare path means
-- GET).  Thread k (0-based) takes lines k+1, k+1+THREADS, ... so no line -- no signature nonce -- is sent
-- twice.  When a thread runs out of lines it stops (and sends one GET /healthz so that wrk has a request to
-- write); the run is then flagged "exhausted".  With "wrap" a thread starts over instead (for endpoints
-- that do not check nonces, such as the bare app).
--
-- done() prints one line "BENCH_JSON {...}" with the totals, latency percentiles (microseconds) and the
-- number of non-200 answers seen by the response hook, so the driver never has to parse wrk's text.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

local lines = {}
local count = 0
local index = 0
local wrap = false
local form_headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }

errors = 0
exhausted = 0
first_error = ""
statuses = ""
local status_counts = {}

function init(args)
   local path = args[1]
   local nthreads = tonumber(args[2] or "1")
   wrap = args[3] == "wrap"
   local file = assert(io.open(path, "r"))
   local n = 0
   for line in file:lines() do
      if n % nthreads == id then
         count = count + 1
         lines[count] = line
      end
      n = n + 1
   end
   file:close()
   if count == 0 then
      error("no requests for thread " .. id .. " in " .. path)
   end
end

local function build(line)
   local method, target, body = line:match("^(%u+) (%S+) ?(.*)$")
   if method == nil then
      return wrk.format("GET", line)
   end
   if method == "POST" then
      return wrk.format("POST", target, form_headers, body)
   end
   return wrk.format(method, target)
end

function request()
   index = index + 1
   if index > count then
      if wrap then
         index = 1
      else
         exhausted = exhausted + 1
         wrk.thread:stop()
         return wrk.format("GET", "/healthz")
      end
   end
   return build(lines[index])
end

function response(status, headers, body)
   if status ~= 200 then
      errors = errors + 1
      status_counts[status] = (status_counts[status] or 0) + 1
      if first_error == "" then
         first_error = tostring(status) .. " " .. string.sub(body or "", 1, 300)
      end
      local parts = {}
      for code, n in pairs(status_counts) do
         table.insert(parts, tostring(code) .. ":" .. tostring(n))
      end
      statuses = table.concat(parts, ",")
   end
end

local function json_string(text)
   text = string.gsub(text or "", '[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end)
   return '"' .. text .. '"'
end

function done(summary, latency, requests)
   local errs, exh, first, status_list = 0, 0, "", {}
   for _, thread in ipairs(threads) do
      errs = errs + (thread:get("errors") or 0)
      exh = exh + (thread:get("exhausted") or 0)
      local fe = thread:get("first_error") or ""
      if first == "" and fe ~= "" then
         first = fe
      end
      local st = thread:get("statuses") or ""
      if st ~= "" then
         table.insert(status_list, st)
      end
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
      '"non200":%d,"exhausted":%d,"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
      '"wrk_status_errors":%d,"statuses":%s,"first_error":%s}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      errs, exh, e.connect, e.read, e.write, e.timeout, e.status,
      json_string(table.concat(status_list, ";")), json_string(first)))
end
