-- stream_trim: bound a stream's length and age without ever removing an entry that a
-- consumer group has not yet acknowledged or not yet been delivered.
--
-- KEYS[1]  the stream
-- ARGV[1]  max length, "0" for no length bound
-- ARGV[2]  min id by age ("<ms>-0"), "" for no age bound
-- ARGV[3]  how many entries one call may inspect for the length bound (caps script time)
--
-- Without consumer groups: XTRIM MAXLEN and MINID as asked. With groups: no MAXLEN; one
-- XTRIM MINID at the lowest of the asked threshold and, per group, its lowest pending id
-- and the id after its last-delivered id. Returns the number of entries removed.
-- idempotent: true
local function parse(id)
  local ms, seq = string.match(id, "^(%d+)-(%d+)$")
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  if am ~= bm then
    return am < bm
  end
  return as < bs
end
local function after(id)
  local ms, seq = parse(id)
  return string.format("%d-%d", ms, seq + 1)
end

if redis.call("EXISTS", KEYS[1]) == 0 then
  return 0
end
local groups = redis.call("XINFO", "GROUPS", KEYS[1])
local maxlen = tonumber(ARGV[1])
if #groups == 0 then
  local removed = 0
  if maxlen > 0 then
    removed = removed + redis.call("XTRIM", KEYS[1], "MAXLEN", maxlen)
  end
  if ARGV[2] ~= "" then
    removed = removed + redis.call("XTRIM", KEYS[1], "MINID", ARGV[2])
  end
  return removed
end

local threshold = nil
if maxlen > 0 then
  local excess = redis.call("XLEN", KEYS[1]) - maxlen
  if excess > 0 then
    local oldest = redis.call("XRANGE", KEYS[1], "-", "+", "COUNT",
      math.min(excess, tonumber(ARGV[3])))
    threshold = after(oldest[#oldest][1])
  end
end
if ARGV[2] ~= "" and (threshold == nil or less(threshold, ARGV[2])) then
  threshold = ARGV[2]
end
if threshold == nil then
  return 0
end
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do
    info[group[i]] = group[i + 1]
  end
  local floor = after(info["last-delivered-id"])
  if tonumber(info["pending"]) > 0 then
    local summary = redis.call("XPENDING", KEYS[1], info["name"])
    if less(summary[2], floor) then
      floor = summary[2]
    end
  end
  if less(floor, threshold) then
    threshold = floor
  end
end
return redis.call("XTRIM", KEYS[1], "MINID", threshold)
