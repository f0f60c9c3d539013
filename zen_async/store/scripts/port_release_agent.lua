-- port_release_agent: end every lease one agent holds on one host.
--
-- KEYS[1..6]  free, used, exp, owner, byagent, quar of the host (see port_allocate.lua)
-- ARGV[1]  agent id
--
-- Returns {port, token, port, token, ...} of the leases released.
-- Cost: O(k log n) for the agent's k leases.
-- idempotent: true (a resend finds nothing left to release)
local free, used, exp, owner, byagent, quar = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

local function parse(member)
  local s, e = string.match(member, "^(%d+):(%d+)$")
  return tonumber(s), tonumber(e)
end

local function ensure_free()
  if redis.call("EXISTS", free) == 1 then return end
  local from = 1
  for _, u in ipairs(redis.call("ZRANGE", used, 0, -1)) do
    local p = tonumber(u)
    if p > from then redis.call("ZADD", free, from, from .. ":" .. p) end
    from = p + 1
  end
  if from < 65536 then redis.call("ZADD", free, from, from .. ":65536") end
end

local function give_back(port)
  local lo, hi = port, port + 1
  local prev = redis.call("ZREVRANGEBYSCORE", free, "(" .. port, "-inf", "LIMIT", 0, 1)[1]
  local nxt = redis.call("ZRANGEBYSCORE", free, port, "+inf", "LIMIT", 0, 1)[1]
  local ps, pe, ns, ne
  if prev then ps, pe = parse(prev) end
  if nxt then ns, ne = parse(nxt) end
  if (pe and pe > port) or ns == port then return end
  if pe == port then lo = ps; redis.call("ZREM", free, prev) end
  if ns == port + 1 then hi = ne; redis.call("ZREM", free, nxt) end
  redis.call("ZADD", free, lo, lo .. ":" .. hi)
end

local agent = ARGV[1]
local released = {}
local members = redis.call("ZRANGEBYLEX", byagent, "[" .. agent .. "|", "(" .. agent .. "}")
if #members > 0 then ensure_free() end
for _, member in ipairs(members) do
  local port = tonumber(string.sub(member, #agent + 2))
  redis.call("ZREM", byagent, member)
  local rec = redis.call("HGET", owner, port)
  local held, holder
  if rec then held, holder = string.match(rec, "^(%d+):(.*)$") end
  if holder == agent then
    redis.call("ZREM", exp, port)
    redis.call("ZREM", used, port)
    redis.call("HDEL", owner, port)
    give_back(port)
    released[#released + 1] = port
    released[#released + 1] = tonumber(held)
  end
end
return released
