-- agent_delete: remove an agent, its index entries and its lease, and record an
-- "agent_deleted" event in its shard stream and audit trail (the trail outlives it).
--
-- KEYS[1]  the agent hash (<P>agent:<id>)
-- ARGV[1]  P, the shard prefix
-- ARGV[2]  agent id
-- ARGV[3]  audit stream max length
-- ARGV[4]  pub/sub channel for the hint ("" for none)
-- ARGV[5]  the shard stream's logical name, for the hint
--
-- Returns the event id, or false when the agent did not exist.
--@include agent_event
local P, id = ARGV[1], ARGV[2]
local current = redis.call("HMGET", KEYS[1], "state", "type", "version")
local state, kind = current[1], current[2]
if not state then
  return false
end
redis.call("DEL", KEYS[1])
redis.call("ZREM", P .. "idx:all", id)
redis.call("ZREM", P .. "idx:type:" .. kind, id)
redis.call("ZREM", P .. "idx:st:" .. state, id)
redis.call("ZREM", P .. "idx:st:" .. state .. ":" .. kind, id)
redis.call("ZREM", P .. "leases", id)
redis.call("ZREM", P .. "reaped", id)
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local data = cjson.encode({from = state, version = tonumber(current[3])})
return emit_agent_event(P, id, "agent_deleted", data, now, ARGV[3], ARGV[4], ARGV[5], {})
