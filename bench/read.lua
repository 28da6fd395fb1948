-- GET /vault/token of a random one of BENCH_TOKENS stored addresses.
local n = tonumber(os.getenv("BENCH_TOKENS") or "10000")
local token = os.getenv("BENCH_ENGINE_TOKEN") or ""
local headers = { ["X-Engine-Id"] = "dev", ["Authorization"] = "Bearer " .. token }

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

function request()
  return wrk.format("GET", "/vault/token/bench/p" .. math.random(0, n - 1), headers)
end
