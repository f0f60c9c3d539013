-- conversation_get: read a thread's metadata and turns in one consistent snapshot.
--
-- KEYS[1]  the thread's metadata hash (zen:...:thread:{<uuid>})
-- KEYS[2]  the thread's turns list (zen:...:thread:{<uuid>}:turns); same hash tag
-- ARGV     none
--
-- Returns {metadata as field, value, ...; turns}; both empty when the thread does not exist.
-- idempotent: true
local meta = redis.call("HGETALL", KEYS[1])
if #meta == 0 then
  return {{}, {}}
end
return {meta, redis.call("LRANGE", KEYS[2], 0, -1)}
