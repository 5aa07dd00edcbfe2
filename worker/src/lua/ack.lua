-- Acknowledge one task, counting it only if this worker still held it.
-- KEYS: processing, counts, stats, attempts, givebacks. ARGV: id, stats field, then keyword/count pairs.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
for i = 3, #ARGV - 1, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
return 1
