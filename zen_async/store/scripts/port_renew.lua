-- port_renew: extend one lease, only if the port is still held by that holder with that
-- fencing token and the lease has not expired. An expired lease is not revived (the port may
-- be reissued at any moment after its expiry); reclaiming it is left to allocation and the
-- reaper, which report it.
--
-- KEYS[1..7]  free, used, exp, owner, byagent, quar, resv of the host (see port_allocate.lua)
-- ARGV[1]  holder: "<tenant>/<agent>"
-- ARGV[2]  port
-- ARGV[3]  fencing token of the lease
-- ARGV[4]  new TTL in ms, counted from now
-- ARGV[5]  host name (for messages)
--
-- Returns the new expiry (server ms).
-- Errors: "CONFLICT ..." naming the port when the lease was released, reissued (another
-- token or holder; another tenant's holder is not named) or has expired.
-- idempotent: true (a resend extends the same lease again)
local exp, owner = KEYS[3], KEYS[4]

--@include port_intervals

local holder, port, token = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local _, agent = split_holder(holder)
local where = "port " .. port .. " on host " .. ARGV[5]
local lease = "the lease of agent " .. agent .. " (token " .. token .. ")"
local rec = redis.call("HGET", owner, port)
if not rec then
  return redis.error_reply("CONFLICT " .. where .. " is no longer leased: " .. lease ..
    " was released, or expired and was reclaimed")
end
local held, now_holder = string.match(rec, "^(%d+):(.*)$")
if held ~= token or now_holder ~= holder then
  return redis.error_reply("CONFLICT " .. where .. " was reissued: " .. lease ..
    " expired or was released, and the port is now " .. held_by(now_holder, held, holder))
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = tonumber(redis.call("ZSCORE", exp, port))
if expiry <= now then
  return redis.error_reply("CONFLICT " .. where .. ": " .. lease .. " expired " ..
    (now - expiry) .. " ms ago; the port is free to be reissued")
end
local renewed = now + tonumber(ARGV[4])
redis.call("ZADD", exp, renewed, port)
return renewed
