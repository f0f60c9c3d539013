-- metrics_names: note metric names as recorded in a recent bucket, and forget names not
-- recorded within the retention horizon.
--
-- KEYS[1]   the names index (zset: metric name -> latest bucket start)
-- ARGV[1]   TTL in milliseconds for the index (retention + one bucket)
-- ARGV[2]   horizon in seconds: names whose latest bucket is older than server time minus
--           this are removed
-- ARGV[3..] name, bucket start, name, bucket start, ...
--
-- Returns the number of names in the index.
-- idempotent: true
for i = 3, #ARGV, 2 do
  redis.call("ZADD", KEYS[1], "GT", ARGV[i + 1], ARGV[i])
end
local now = tonumber(redis.call("TIME")[1])
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", "(" .. (now - tonumber(ARGV[2])))
redis.call("PEXPIRE", KEYS[1], ARGV[1])
return redis.call("ZCARD", KEYS[1])
