-- port_intervals: the free-interval helpers shared by the port scripts, included where a
-- script says "--@include port_intervals", after it has set the locals `free` (the host's
-- ZSET of free intervals "start:end", end exclusive, scored by start) and `used` (the ZSET
-- of leased or quarantined ports).
local function parse(member)
  local s, e = string.match(member, "^(%d+):(%d+)$")
  return tonumber(s), tonumber(e)
end

-- The free intervals are the complement of the used ports; rebuilt only when missing.
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

-- Return a port to the free intervals, merging with its neighbours.
local function give_back(port)
  local lo, hi = port, port + 1
  local prev = redis.call("ZREVRANGEBYSCORE", free, "(" .. port, "-inf", "LIMIT", 0, 1)[1]
  local nxt = redis.call("ZRANGEBYSCORE", free, port, "+inf", "LIMIT", 0, 1)[1]
  local ps, pe, ns, ne
  if prev then ps, pe = parse(prev) end
  if nxt then ns, ne = parse(nxt) end
  if (pe and pe > port) or ns == port then return end -- already free
  if pe == port then lo = ps; redis.call("ZREM", free, prev) end
  if ns == port + 1 then hi = ne; redis.call("ZREM", free, nxt) end
  redis.call("ZADD", free, lo, lo .. ":" .. hi)
end
