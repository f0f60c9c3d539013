-- agent_reap: claim the agents of one shard whose liveness lease expired, move each to
-- "error" with reason "heartbeat_lost" (indexes, version, event, as agent_transition does),
-- and schedule the release of its ports after a grace period. The script runs alone, so two
-- reapers never handle the same agent: the second finds the lease gone.
--
-- KEYS[1]  the shard's lease sorted set (<P>leases)
-- ARGV[1]  P, the shard prefix
-- ARGV[2]  at most this many agents per call
-- ARGV[3]  grace period in ms before the ports are released
-- ARGV[4]  audit stream max length
-- ARGV[5]  pub/sub channel for the hint ("" for none)
-- ARGV[6]  the shard stream's logical name, for the hint
--
-- Returns the ids of the agents it moved to "error".
--@include agent_event
local P = ARGV[1]
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local expired = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now, "LIMIT", 0, tonumber(ARGV[2]))
local reaped = {}
for _, id in ipairs(expired) do
  redis.call("ZREM", KEYS[1], id)
  local key = P .. "agent:" .. id
  local current = redis.call("HMGET", key, "state", "version", "type")
  local from, kind = current[1], current[3]
  if from and from ~= "terminated" then
    redis.call("ZADD", P .. "reaped", now + tonumber(ARGV[3]), id)
    if from ~= "error" then
      local version = tonumber(current[2]) + 1
      redis.call("HSET", key, "state", "error", "version", version, "updated", now)
      redis.call("ZREM", P .. "idx:st:" .. from, id)
      redis.call("ZREM", P .. "idx:st:" .. from .. ":" .. kind, id)
      redis.call("ZADD", P .. "idx:st:error", 0, id)
      redis.call("ZADD", P .. "idx:st:error:" .. kind, 0, id)
      local data = cjson.encode({from = from, to = "error", version = version,
        reason = "heartbeat_lost"})
      emit_agent_event(P, id, "state_changed", data, now, ARGV[4], ARGV[5], ARGV[6],
        {to = "error", version = version})
      reaped[#reaped + 1] = id
    end
  end
end
return reaped
