<?php
// A webhook receiver for roostd's lifecycle events (contract §9), in plain
// PHP (8.1 or later; no framework, no Composer). roostd POSTs
//
//   {"time_ms":...,"events":[{"id":"<unique>","name":"member_added","channel":"presence-room:1","user_id":"alice"},...]}
//
// with `X-Roost-Signature: <hex HMAC-SHA256 of the raw body>`, keyed with
// roostd's default key (the same secret the app mints tokens with). This
// script checks the signature before anything else, then records each event
// once (delivery is at least once: a batch whose 2xx got lost comes again,
// so events are deduplicated by `id`), and answers 200. Anything else it
// refuses without recording: the wrong method (405), a bad or missing
// signature (401), a body that is not an event batch (400).
//
//   export ROOSTD_SECRET='the same secret roostd uses'
//   php -S 127.0.0.1:8001 webhook.php
//   roostd serve --webhook http://127.0.0.1:8001/
//
//   GET /events   the recorded events, oldest first (a JSON array)
//   GET /state    what they add up to: {"occupied":[channels],"members":{channel:[users]}}
//
// Events are kept in WEBHOOK_DATA (default: <temp dir>/roostd-webhook), one
// JSON object per line, under an exclusive lock so concurrent requests
// (php -S workers, php-fpm) never record an id twice. A real application
// would insert into its database with a unique index on the id instead.

declare(strict_types=1);

/** Answers with a JSON body and stops. */
function reply(int $status, array $body): never
{
    http_response_code($status);
    header('Content-Type: application/json');
    echo json_encode($body, JSON_UNESCAPED_SLASHES), "\n";
    exit;
}

$secret = getenv('ROOSTD_SECRET');
if (!is_string($secret) || strlen($secret) < 32) {
    reply(500, ['error' => 'set ROOSTD_SECRET to the secret roostd uses (at least 32 bytes)']);
}
$dir = getenv('WEBHOOK_DATA') ?: sys_get_temp_dir() . '/roostd-webhook';
if (!is_dir($dir) && !mkdir($dir, 0700, true) && !is_dir($dir)) {
    reply(500, ['error' => "cannot create $dir: set WEBHOOK_DATA to a writable folder"]);
}
$log = "$dir/events.jsonl";

/** Every recorded event, oldest first. */
function recorded(string $log): array
{
    $events = [];
    if (!is_file($log)) {
        return $events;
    }
    foreach (file($log, FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) as $line) {
        $e = json_decode($line, true);
        if (is_array($e)) {
            $events[] = $e;
        }
    }
    return $events;
}

$method = $_SERVER['REQUEST_METHOD'] ?? 'GET';
$path = parse_url($_SERVER['REQUEST_URI'] ?? '/', PHP_URL_PATH);

if ($method === 'GET' && $path === '/events') {
    reply(200, recorded($log));
}
if ($method === 'GET' && $path === '/state') {
    $occupied = [];
    $members = [];
    foreach (recorded($log) as $e) {
        $ch = (string)($e['channel'] ?? '');
        $user = (string)($e['user_id'] ?? '');
        switch ($e['name'] ?? '') {
            case 'channel_occupied': $occupied[$ch] = true; break;
            case 'channel_vacated': unset($occupied[$ch]); break;
            case 'member_added': $members[$ch][$user] = true; break;
            case 'member_removed': unset($members[$ch][$user]); break;
        }
    }
    $members = array_filter(array_map(fn ($users) => array_keys($users), $members));
    reply(200, ['occupied' => array_keys($occupied), 'members' => (object)$members]);
}
if ($method !== 'POST') {
    header('Allow: POST');
    reply(405, ['error' => 'method_not_allowed']);
}

// The signature covers the raw bytes: check them before decoding anything.
$body = file_get_contents('php://input');
$given = strtolower(trim((string)($_SERVER['HTTP_X_ROOST_SIGNATURE'] ?? '')));
$expected = hash_hmac('sha256', $body, $secret);
if ($given === '' || !hash_equals($expected, $given)) {
    reply(401, ['error' => 'bad_signature']);
}

$batch = json_decode($body, true);
if (!is_array($batch) || !isset($batch['events']) || !is_array($batch['events']) || !array_is_list($batch['events'])) {
    reply(400, ['error' => 'bad_request', 'msg' => 'expected {"time_ms":...,"events":[...]}']);
}
foreach ($batch['events'] as $e) {
    if (!is_array($e) || !is_string($e['id'] ?? null) || !is_string($e['name'] ?? null)) {
        reply(400, ['error' => 'bad_request', 'msg' => 'every event needs a string id and name']);
    }
}

// Record each id once, under a lock held across the read and the append.
$fh = fopen($log, 'c+');
if ($fh === false || !flock($fh, LOCK_EX)) {
    reply(503, ['error' => 'cannot lock the event log']); // roostd retries
}
$seen = [];
foreach (recorded($log) as $e) {
    $seen[$e['id']] = true;
}
$new = '';
$added = 0;
foreach ($batch['events'] as $e) {
    if (isset($seen[$e['id']])) {
        continue;
    }
    $seen[$e['id']] = true;
    $new .= json_encode($e, JSON_UNESCAPED_SLASHES) . "\n";
    $added++;
}
fseek($fh, 0, SEEK_END);
$ok = $new === '' || (fwrite($fh, $new) === strlen($new) && fflush($fh));
flock($fh, LOCK_UN);
fclose($fh);
if (!$ok) {
    reply(503, ['error' => 'cannot write the event log']); // not acknowledged: roostd retries
}
reply(200, ['recorded' => $added, 'duplicates' => count($batch['events']) - $added]);
