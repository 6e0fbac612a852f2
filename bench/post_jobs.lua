-- wrk script for bench/jobs_e2e.sh: POST /jobs, exactly JOBS_PER_THREAD requests per thread
-- (run with as many connections as threads), then the thread stops. Job ids are made by
-- Turnstile. A response other than 201 is reported on stderr.
local n = 0
local limit = tonumber(os.getenv("JOBS_PER_THREAD") or "1000")
wrk.method = "POST"
wrk.body = '{"job_type":"task","data":{"n":1}}'
wrk.headers["Content-Type"] = "application/json"

function response(status, headers, body)
  n = n + 1
  if status ~= 201 then
    io.stderr:write("POST /jobs: " .. status .. " " .. body .. "\n")
  end
  if n >= limit then
    wrk.thread:stop()
  end
end
