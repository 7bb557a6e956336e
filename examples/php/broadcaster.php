<?php
// The Pusher side of the main application, done as Laravel's
// PusherBroadcaster and pusher-php-server do it, without Composer: roostd
// speaks the Pusher protocol (docs/pusher.md), so a page using pusher-js or
// Laravel Echo is authorized here and hears the events triggered here.
//
//   pusher_channel_auth()  what /broadcasting/auth answers (private-, presence-)
//   pusher_trigger()       POST /apps/{id}/events, signed like pusher-php-server

declare(strict_types=1);

/**
 * The answer to a channel authorization, as Laravel's PusherBroadcaster
 * (through pusher-php-server's authorizeChannel / authorizePresenceChannel)
 * gives it: `auth` = key:hex(HMAC-SHA256(socket_id:channel[:channel_data])),
 * and for presence channels the `channel_data` text that was signed, which
 * the client sends back verbatim.
 */
function pusher_channel_auth(string $key, string $secret, string $socket_id, string $channel, ?array $presence = null): array
{
    $to_sign = $socket_id . ':' . $channel;
    $answer = [];
    if ($presence !== null) {
        $channel_data = json_encode($presence, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR);
        $to_sign .= ':' . $channel_data;
        $answer['channel_data'] = $channel_data;
    }
    return ['auth' => $key . ':' . hash_hmac('sha256', $to_sign, $secret)] + $answer;
}

/**
 * The query of a signed Pusher API request (pusher-php-server's
 * build_auth_query_params): auth_key, auth_timestamp, auth_version and
 * body_md5, then auth_signature = hex(HMAC-SHA256(METHOD\nPATH\nQUERY)) where
 * QUERY is the other parameters sorted by name, joined k=v with &.
 */
function pusher_signed_query(string $key, string $secret, string $method, string $path, string $body, int $now): string
{
    $params = ['auth_key' => $key, 'auth_timestamp' => (string) $now, 'auth_version' => '1.0'];
    if ($body !== '') {
        $params['body_md5'] = md5($body);
    }
    ksort($params);
    $query = implode('&', array_map(fn ($k, $v) => "$k=$v", array_keys($params), $params));
    $signature = hash_hmac('sha256', "$method\n$path\n$query", $secret);
    return $query . '&auth_signature=' . $signature;
}

/**
 * Triggers `event` on `channels` (Laravel's broadcast(), pusher-php-server's
 * trigger()): POST /apps/{id}/events with {name, data, channels[, socket_id]}
 * where `data` is the JSON text of the payload. `socket_id` leaves that
 * connection out (Laravel's toOthers()). Returns [status, body]; status 0
 * when roostd could not be reached.
 */
function pusher_trigger(string $base_url, string $app_id, string $key, string $secret, array $channels, string $event, mixed $payload, ?string $socket_id = null): array
{
    $request = [
        'name' => $event,
        'data' => json_encode($payload, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR),
        'channels' => array_values($channels),
    ];
    if ($socket_id !== null && $socket_id !== '') {
        $request['socket_id'] = $socket_id;
    }
    $body = json_encode($request, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR);
    $path = '/apps/' . rawurlencode($app_id) . '/events';
    $url = rtrim($base_url, '/') . $path . '?' . pusher_signed_query($key, $secret, 'POST', $path, $body, time());
    return http_post($url, ['Content-Type: application/json'], $body);
}

/**
 * POSTs `body` with `headers` (one request per connection: roostd closes
 * after the answer, so PHP's stream reads the body to its end without
 * waiting). Returns [status, body]; status 0 when the server could not be
 * reached. 4xx/5xx bodies are read too.
 */
function http_post(string $url, array $headers, string $body): array
{
    $headers[] = 'Content-Length: ' . strlen($body);
    $headers[] = 'Connection: close';
    $context = stream_context_create([
        'http' => [
            'method' => 'POST',
            'header' => implode("\r\n", $headers),
            'content' => $body,
            'protocol_version' => 1.1,
            'timeout' => 5,
            'ignore_errors' => true,
            'follow_location' => 0,
        ],
    ]);
    $answer = @file_get_contents($url, false, $context);
    $response_headers = function_exists('http_get_last_response_headers')
        ? (http_get_last_response_headers() ?? [])
        : ($http_response_header ?? []);
    if ($answer === false || !$response_headers) {
        return [0, ''];
    }
    preg_match('#^HTTP/\S+\s+(\d{3})#', $response_headers[0], $m);
    return [(int) ($m[1] ?? 0), $answer];
}

/**
 * The demo's "logged-in user": a cookie `demo_user=NAME.HMAC` that /login
 * sets, signed with the app's secret so a browser cannot claim another name.
 * A real application uses its session (Laravel: auth()->user()).
 */
function demo_login_cookie(string $user, string $secret): string
{
    return $user . '.' . hash_hmac('sha256', 'demo_user:' . $user, $secret);
}

function demo_current_user(string $secret): ?string
{
    $cookie = (string) ($_COOKIE['demo_user'] ?? '');
    $dot = strrpos($cookie, '.');
    if ($dot === false) {
        return null;
    }
    $user = substr($cookie, 0, $dot);
    return $user !== '' && hash_equals(demo_login_cookie($user, $secret), $cookie) ? $user : null;
}

/**
 * routes/channels.php of the demo: who may join which channel. Any logged-in
 * user may join private-* and presence-* channels, except
 * private-user.{id} (Laravel's App.Models.User.{id}), which is that user's
 * alone. Returns the presence member info (user_id and user_info) for
 * presence channels, true for allowed private ones, false when refused.
 */
function demo_channel_allowed(string $user, string $channel): array|bool
{
    if (str_starts_with($channel, 'private-user.')) {
        return $channel === 'private-user.' . $user;
    }
    if (str_starts_with($channel, 'presence-')) {
        return ['user_id' => $user, 'user_info' => ['name' => ucfirst($user)]];
    }
    return str_starts_with($channel, 'private-');
}
