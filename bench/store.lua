-- POST /vault/store at one of 20,000 addresses: new ones at first, then
-- more and more replacements (each a new durable version).
local token = os.getenv("BENCH_ENGINE_TOKEN") or ""
local headers = {
  ["X-Engine-Id"] = "dev",
  ["Authorization"] = "Bearer " .. token,
  ["Content-Type"] = "application/json",
}

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

function request()
  local i = math.random(0, 19999)
  local body = '{"project_id":"store","platform":"s' .. i .. '","token_data":'
    .. '{"access_token":"xoxb-store-' .. i .. '-0123456789abcdef","refresh_token":"xoxe-' .. i
    .. '","expires_in":3600,"scopes":["chat:write"]}}'
  return wrk.format("POST", "/vault/store", headers, body)
end
