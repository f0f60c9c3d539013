-- agent_get: the stored fields of agents of one shard (the bulk read of get_agents: one call
-- per chunk instead of one HGETALL per agent, all read at one instant).
--
-- KEYS[i]  the hash of agent i (<P>agent:<id>)
-- ARGV     the field names to read, in order
--
-- Returns, for each key, the values of those fields (nil where unset: all nil for an agent
-- that does not exist).
-- idempotent: true
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call("HMGET", key, unpack(ARGV))
end
return out
