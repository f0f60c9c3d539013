-- port_lease: the steps of leasing a port, as functions: port_allocate.lua's, and those of a
-- script that leases a port as one part of a larger atomic step (task_claim_lease). Included after
-- "--@include port_intervals", once the script has set the locals that library needs
-- (free, used, exp, owner, byagent, quar, resv) and `seq`, the host's fencing-token counter.
-- The rules: expired leases of the host (of any tenant) are reclaimed
-- first, then the lowest free port of the range is taken, under a new fencing token.

-- Reclaim at most `max` leases of the host expired by `now`; returns them flat:
-- port, token, holder of each.
local function reclaim_expired(now, max)
  local reclaimed = {}
  for _, p in ipairs(redis.call("ZRANGEBYSCORE", exp, "-inf", now, "LIMIT", 0, max)) do
    local port = tonumber(p)
    local token, was = drop(port)
    reclaimed[#reclaimed + 1] = port
    reclaimed[#reclaimed + 1] = token
    reclaimed[#reclaimed + 1] = was
  end
  return reclaimed
end

-- The lowest free port of [first, last): in the interval holding `first`, else the first
-- interval starting inside the range; nil when none is free. Writes nothing.
local function lowest_free(first, last)
  local member = redis.call("ZREVRANGEBYSCORE", free, first, "-inf", "LIMIT", 0, 1)[1]
  if member then
    local _, e = parse(member)
    if e > first then return first end
  end
  member = redis.call("ZRANGEBYSCORE", free, first, "(" .. last, "LIMIT", 0, 1)[1]
  if member then return (parse(member)) end
  return nil
end

-- Why [first, last) on `host` has no free port: the text of the CAPACITY error (without
-- the code), with the ports in use, in outage reserves and quarantined.
local function exhausted(first, last, host)
  local in_use = redis.call("ZCOUNT", used, first, last - 1)
  local q = redis.call("ZCOUNT", quar, first, last - 1)
  local reserved = redis.call("ZRANGEBYSCORE", resv, first, last - 1)
  local reserves = "none held in outage reserves"
  if #reserved > 0 then
    local seen, processes = {}, 0
    for _, p in ipairs(reserved) do
      local rec = redis.call("HGET", owner, p)
      local h = rec and string.match(rec, "^%d+:(.*)$") or ""
      if not seen[h] then seen[h], processes = true, processes + 1 end
    end
    reserves = #reserved .. " held in outage reserves by " .. processes ..
      (processes == 1 and " process" or " processes") .. ", see REDIS_PORT_RESERVE"
  end
  return "port range " .. first .. "-" .. last .. " (end exclusive) on host " .. host ..
    " is exhausted: " .. in_use .. " of " .. (last - first) .. " ports in use (" .. reserves ..
    "; " .. q .. " quarantined as not bindable)"
end

-- Lease `port` (free: lowest_free found it) to `holder` until now + ttl; returns the lease's
-- fencing token and expiry (server ms).
local function lease_port(port, holder, now, ttl)
  take(port)
  local token = redis.call("INCR", seq)
  local expiry = now + ttl
  redis.call("ZADD", used, port, port)
  redis.call("ZADD", exp, expiry, port)
  redis.call("HSET", owner, port, token .. ":" .. holder)
  redis.call("ZADD", byagent, 0, index_member(holder, port))
  return token, expiry
end

-- Note `host` in an agent's host index (ZSET host -> deadline), as port_agent_hosts.lua does
-- for one agent and one host: kept until its latest lease could have expired, plus `grace`.
local function note_host(key, host, now, ttl, grace)
  redis.call("ZADD", key, "GT", now + ttl, host)
  redis.call("ZREMRANGEBYSCORE", key, "-inf", "(" .. (now - grace))
  local last = redis.call("ZRANGE", key, -1, -1, "WITHSCORES")
  if last[2] then
    redis.call("PEXPIRE", key, math.max(1, tonumber(last[2]) - now + grace))
  end
end
