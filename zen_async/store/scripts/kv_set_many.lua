-- kv_set_many: SET many keys, each with the same TTL (the bulk path of Keyspace.set_many:
-- one call per chunk instead of one command per key).
--
-- KEYS[i]      a key (on Cluster, every key of one call is in one hash slot)
-- ARGV[1]      TTL in ms
-- ARGV[i + 1]  the value of KEYS[i]
--
-- Returns the number of keys set.
-- idempotent: true
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do
  redis.call("SET", key, ARGV[i + 1], "PX", ttl)
end
return #KEYS
