<?php
// A tiny "main application" beside roostd: no framework, no Composer.
//
//   ROOSTD_SECRET=... ROOSTD_URL=http://127.0.0.1:8080 php -S 127.0.0.1:8000 app.php
//
// Routes:
//   GET  /token?sub=NAME          a client token (read/write room:*) as JSON
//   GET  /publish?ch=CH&text=TXT  publishes {"text":TXT} through roostd's HTTP API
//                                 (optional &key=K: an Idempotency-Key); answers
//                                 with roostd's status and JSON
//   POST /hook                    a publish hook for roostd's --publish-hook
//   GET  /login?user=NAME         the demo's log-in: a signed `demo_user` cookie
//   POST /broadcasting/auth       Laravel's channel authorization for pusher-js
//                                 and Echo (private-*, presence-*), for the
//                                 logged-in user
//   GET  /broadcast?ch=CH&event=E&text=TXT[&socket_id=S]
//                                 triggers E with {"text":TXT} on CH through
//                                 roostd's Pusher HTTP API (broadcaster.php)
//
// Environment:
//   ROOSTD_SECRET  the HMAC secret roostd uses (the same string; >= 32 bytes)
//   ROOSTD_URL     where roostd listens (default http://127.0.0.1:8080)
//   APP_SUB        the `sub` of the application's own token (default php-app)
//   PUSHER_APP_ID, PUSHER_APP_KEY  roostd's --pusher-app-id and --pusher-key
//   PUSHER_APP_SECRET  the Pusher app secret (default ROOSTD_SECRET, which is
//                  roostd's default for --pusher-secret-file)

declare(strict_types=1);

require __DIR__ . '/token.php';
require __DIR__ . '/broadcaster.php';

function secret(): string
{
    $secret = getenv('ROOSTD_SECRET');
    if ($secret === false || strlen($secret) < 32) {
        reply(500, ['error' => 'ROOSTD_SECRET is not set to a secret of at least 32 bytes']);
    }
    return $secret;
}

function roostd_url(): string
{
    return rtrim(getenv('ROOSTD_URL') ?: 'http://127.0.0.1:8080', '/');
}

/** Sends a JSON answer (or none for null) and stops. */
function reply(int $status, mixed $body = null, string $json = ''): never
{
    http_response_code($status);
    if ($body !== null || $json !== '') {
        header('Content-Type: application/json');
        header('Cache-Control: no-store');
        echo $json !== '' ? $json : json_encode($body, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
    }
    exit;
}

/**
 * POST /api/channels/{ch}/messages on roostd with the app's own token.
 * Returns [status, body]; status 0 when roostd could not be reached.
 */
function roostd_publish(string $ch, mixed $data, ?string $idempotency_key = null): array
{
    $body = json_encode($data, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR);
    $headers = [
        'Authorization: Bearer ' . app_token(getenv('APP_SUB') ?: 'php-app', secret()),
        'Content-Type: application/json',
    ];
    if ($idempotency_key !== null && $idempotency_key !== '') {
        $headers[] = 'Idempotency-Key: ' . $idempotency_key;
    }
    // Channel names may hold ':' and '/': percent-encode the path segment.
    $url = roostd_url() . '/api/channels/' . rawurlencode($ch) . '/messages';
    return http_post($url, $headers, $body);
}

/** [app id, key, secret] of roostd's Pusher app (docs/pusher.md §1). */
function pusher_app(): array
{
    $id = getenv('PUSHER_APP_ID') ?: '';
    $key = getenv('PUSHER_APP_KEY') ?: '';
    if ($id === '' || $key === '') {
        reply(500, ['error' => 'set PUSHER_APP_ID and PUSHER_APP_KEY to roostd\'s --pusher-app-id and --pusher-key']);
    }
    $secret = getenv('PUSHER_APP_SECRET') ?: secret();
    return [$id, $key, $secret];
}

function bearer_token(): ?string
{
    $auth = $_SERVER['HTTP_AUTHORIZATION'] ?? '';
    return preg_match('/^Bearer\s+(\S+)$/i', $auth, $m) ? $m[1] : null;
}

$path = parse_url($_SERVER['REQUEST_URI'] ?? '/', PHP_URL_PATH);
$method = $_SERVER['REQUEST_METHOD'] ?? 'GET';

switch ($path) {
    case '/token':
        // A real application mints this only for a user it has logged in.
        $sub = (string) ($_GET['sub'] ?? '');
        if ($sub === '' || strlen($sub) > 128) {
            reply(400, ['error' => 'sub is required']);
        }
        $token = client_token($sub, secret());
        reply(200, ['sub' => $sub, 'token' => $token]);

    case '/publish':
        $ch = (string) ($_GET['ch'] ?? '');
        $text = (string) ($_GET['text'] ?? '');
        if ($ch === '') {
            reply(400, ['error' => 'ch is required']);
        }
        [$status, $answer] = roostd_publish($ch, ['text' => $text], $_GET['key'] ?? null);
        if ($status === 0) {
            reply(502, ['error' => 'roostd_unreachable']);
        }
        // roostd's own answer: 201 {"ch","seq","ts"}, 200 for a repeated
        // key, or {"error":"<code>"} with its status.
        reply($status, null, $answer);

    case '/hook':
        // roostd's publish hook (spec §5): POST {"ch","from","data","id"}
        // with the publishing client's own token as Bearer. 2xx lets the
        // message through ({"data":...} replaces it), 4xx refuses it.
        if ($method !== 'POST') {
            reply(405, ['error' => 'method_not_allowed']);
        }
        $token = bearer_token();
        $claims = $token === null ? null : jwt_hs256_verify($token, secret());
        if ($claims === null) {
            reply(401, ['error' => 'token_invalid']);
        }
        $request = json_decode((string) file_get_contents('php://input'), true);
        if (!is_array($request) || !isset($request['ch']) || !array_key_exists('data', $request)) {
            reply(400, ['error' => 'bad_request']);
        }
        $data = $request['data'];
        if (is_array($data) && isset($data['text']) && is_string($data['text'])) {
            if (stripos($data['text'], 'forbidden') !== false) {
                reply(403, ['error' => 'forbidden']);
            }
            $data['text'] = function_exists('mb_strtoupper') ? mb_strtoupper($data['text'], 'UTF-8') : strtoupper($data['text']);
            reply(200, ['data' => $data]);
        }
        reply(200); // let it through unchanged

    case '/login':
        // The demo's log-in: whoever asks is that user. A real application
        // checks a password and uses its session.
        $user = (string) ($_GET['user'] ?? '');
        if (!preg_match('/^[A-Za-z0-9_-]{1,64}$/', $user)) {
            reply(400, ['error' => 'user is required: letters, digits, _ and -']);
        }
        setcookie('demo_user', demo_login_cookie($user, secret()), ['path' => '/', 'httponly' => true, 'samesite' => 'Lax']);
        reply(200, ['user' => $user]);

    case '/broadcasting/auth':
        // Laravel's Broadcast::routes(): pusher-js and Echo POST socket_id and
        // channel_name (a form, or JSON) with the page's cookies.
        if ($method !== 'POST') {
            reply(405, ['error' => 'method_not_allowed']);
        }
        $form = $_POST ?: (json_decode((string) file_get_contents('php://input'), true) ?: []);
        $socket_id = (string) ($form['socket_id'] ?? '');
        $channel = (string) ($form['channel_name'] ?? '');
        if (!preg_match('/^\d+\.\d+$/', $socket_id) || $channel === '' || strlen($channel) > 200) {
            reply(400, ['error' => 'socket_id and channel_name are required']);
        }
        $user = demo_current_user(secret());
        if ($user === null) {
            reply(403, ['error' => 'not_logged_in']); // Laravel: AccessDeniedHttpException
        }
        $allowed = demo_channel_allowed($user, $channel);
        if ($allowed === false) {
            reply(403, ['error' => 'forbidden']);
        }
        [, $key, $pusher_secret] = pusher_app();
        reply(200, pusher_channel_auth($key, $pusher_secret, $socket_id, $channel, is_array($allowed) ? $allowed : null));

    case '/broadcast':
        $ch = (string) ($_GET['ch'] ?? '');
        $event = (string) ($_GET['event'] ?? '');
        if ($ch === '' || $event === '') {
            reply(400, ['error' => 'ch and event are required']);
        }
        [$app_id, $key, $pusher_secret] = pusher_app();
        [$status, $answer] = pusher_trigger(roostd_url(), $app_id, $key, $pusher_secret, [$ch], $event,
            ['text' => (string) ($_GET['text'] ?? '')], $_GET['socket_id'] ?? null);
        if ($status === 0) {
            reply(502, ['error' => 'roostd_unreachable']);
        }
        reply($status, null, $answer === '' ? '{}' : $answer);

    default:
        reply(404, ['error' => 'not_found']);
}
