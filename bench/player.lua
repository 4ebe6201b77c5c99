-- wrk script shaped like video players. Arguments (after --):
--   paths_file mode range_bytes object_size [zipf_s]
-- paths_file: one request path per line (signed, token in the query)
-- mode: "uniform" or "zipf" (popularity of the paths, rank = line number), or "player":
--   viewers that read their object front to back in range_bytes steps, seek to a random
--   offset with probability 1/20 per request, and pick a new object by Zipf popularity when
--   they reach the end (one viewer per connection on average: wrk -t1 issues requests in turn)
-- range_bytes: 0 for whole-object GETs, else a Range of that size (at a random offset, or
--   the viewer's position in "player" mode)
-- object_size: size of the objects (for the random offsets)
-- Prints one line "JSON {...}" with counts and latency percentiles (microseconds).

local paths = {}
local mode, range_bytes, object_size
local cdf = {}
local viewers, turn = {}, 0
local VIEWERS, SEEK_CHANCE = 64, 0.05

local function seed()
  local address = tostring({}):match("0x(%x+)") or "0"
  math.randomseed(os.time() + tonumber(address, 16) % 100000)
end

function init(args)
  for line in io.lines(args[1]) do
    paths[#paths + 1] = line
  end
  mode = args[2] or "uniform"
  range_bytes = tonumber(args[3] or "0")
  object_size = tonumber(args[4] or "0")
  if mode == "zipf" or mode == "player" then
    local s = tonumber(args[5] or "1.0")
    local total = 0
    for rank = 1, #paths do
      total = total + 1 / rank ^ s
      cdf[rank] = total
    end
    for rank = 1, #paths do
      cdf[rank] = cdf[rank] / total
    end
  end
  seed()
end

local function pick()
  if mode == "uniform" then
    return paths[math.random(#paths)]
  end
  local u = math.random()
  local low, high = 1, #cdf
  while low < high do
    local mid = math.floor((low + high) / 2)
    if cdf[mid] < u then low = mid + 1 else high = mid end
  end
  return paths[low]
end

local function player_request()
  turn = turn % VIEWERS + 1
  local viewer = viewers[turn]
  if viewer == nil or viewer.position >= object_size then
    viewer = { path = pick(), position = 0 }
    viewers[turn] = viewer
  elseif math.random() < SEEK_CHANCE then
    viewer.position = math.random(0, object_size - 1)
  end
  local first = viewer.position
  local last = math.min(first + range_bytes, object_size) - 1
  viewer.position = last + 1
  return wrk.format("GET", viewer.path, { Range = "bytes=" .. first .. "-" .. last })
end

function request()
  if mode == "player" then
    return player_request()
  end
  local headers = {}
  if range_bytes > 0 then
    local start = math.random(0, object_size - range_bytes)
    headers["Range"] = "bytes=" .. start .. "-" .. (start + range_bytes - 1)
  end
  return wrk.format("GET", pick(), headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests":%d,"bytes":%d,"duration_us":%d,"errors":%d,"non2xx":%d,' ..
    '"p50_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.bytes, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
