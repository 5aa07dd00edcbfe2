-- Acknowledge many tasks; each is the ack script on its own.
-- KEYS: processing, counts, stats, attempts, givebacks. ARGV: n, then per task: id, stats field, pair
-- count, keyword/count pairs. Returns one 0/1 per task.
local out = {}
local i = 2
for t = 1, tonumber(ARGV[1]) do
  local id, field, pairs = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  if redis.call('LREM', KEYS[1], 1, id) == 1 then
    for j = i, i + 2 * pairs - 1, 2 do
      redis.call('HINCRBY', KEYS[2], ARGV[j], ARGV[j + 1])
    end
    redis.call('HINCRBY', KEYS[3], field, 1)
    redis.call('HDEL', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
    out[t] = 1
  else
    out[t] = 0
  end
  i = i + 2 * pairs
end
return out
