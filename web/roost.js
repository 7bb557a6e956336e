// roost.js: the roostd client (placeholder until the client lands).
export {};
