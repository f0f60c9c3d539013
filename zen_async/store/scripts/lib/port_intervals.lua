-- port_intervals: helpers shared by the port scripts, included where a script says
-- "--@include port_intervals", after it has set the locals they use: `free` (the host's ZSET
-- of free intervals "start:end", end exclusive, scored by start) and `used` (the ZSET of
-- leased or quarantined ports) for the interval helpers; also `exp`, `owner`, `byagent`,
-- `quar` and `resv` for drop().
--
-- A port's holder is "<tenant>/<agent>" ("" while quarantined): the ports of a host are
-- shared by every tenant, a lease belongs to one tenant's agent.
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

-- Take a port out of the free intervals, splitting the one that holds it; false when the
-- port was not free.
local function take(port)
  local member = redis.call("ZREVRANGEBYSCORE", free, port, "-inf", "LIMIT", 0, 1)[1]
  if not member then return false end
  local s, e = parse(member)
  if e <= port then return false end
  redis.call("ZREM", free, member)
  if s < port then redis.call("ZADD", free, s, s .. ":" .. port) end
  if port + 1 < e then redis.call("ZADD", free, port + 1, (port + 1) .. ":" .. e) end
  return true
end

-- The member of the per-holder index for one port.
local function index_member(holder, port)
  return holder .. "|" .. string.format("%05d", port)
end

-- Forget whatever holds the port and free it; returns its token and holder ("" if it was
-- quarantined).
local function drop(port)
  local rec = redis.call("HGET", owner, port)
  local token, holder = "0", ""
  if rec then token, holder = string.match(rec, "^(%d+):(.*)$") end
  redis.call("ZREM", exp, port)
  redis.call("ZREM", used, port)
  redis.call("ZREM", quar, port)
  redis.call("ZREM", resv, port)
  redis.call("HDEL", owner, port)
  if holder ~= "" then redis.call("ZREM", byagent, index_member(holder, port)) end
  give_back(port)
  return tonumber(token), holder
end

-- The tenant and the agent id of a holder.
local function split_holder(holder)
  local tenant, agent = string.match(holder, "^([^/]*)/(.*)$")
  if not tenant then return "", holder end
  return tenant, agent
end

-- What a message to `caller` (a holder) says about the holder of a port: an agent of the
-- caller's tenant by its id and token; a lease of another tenant only as such, so that no
-- agent id (or token) crosses tenants.
local function held_by(holder, token, caller)
  if holder == "" then return "quarantined as not bindable" end
  local tenant, agent = split_holder(holder)
  if tenant == split_holder(caller) then
    return "held by agent " .. agent .. " with token " .. token
  end
  return "held by another tenant"
end
