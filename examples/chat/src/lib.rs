//! A chat room on typed channels: the `chat` channel, its services and its types.
//!
//! A client opens `chat` with `{"room": "lobby"}` and follows the room's topic at once. Anyone may
//! read the `history`; `authenticate` with a token sets the session, after which `send` stores a
//! message and publishes it to everyone in the room. `main.rs` serves it; `tests/` drive it.

use std::collections::HashMap;
use std::sync::Mutex;

use plexus_channels::{Action, ActionError, Channel, Channels, Ctx};
use serde::{Deserialize, Serialize};
use ts_rs::TS;

/// The application's state, given to every handler.
#[derive(Debug)]
pub struct ChatServices {
    /// Token → user name. A real application would verify a signed token or ask a database.
    tokens: HashMap<String, String>,
    rooms: Mutex<HashMap<String, Vec<ChatMessage>>>,
}

impl ChatServices {
    /// Services that accept `token-{name}` for alice, bob and carol.
    pub fn demo() -> Self {
        let tokens =
            ["alice", "bob", "carol"].into_iter().map(|n| (format!("token-{n}"), n.to_owned())).collect();
        ChatServices { tokens, rooms: Mutex::default() }
    }
}

/// The session an `authenticate` sets.
#[derive(Debug)]
pub struct ChatUser {
    pub name: String,
}

/// What a `chat` channel is opened with.
#[derive(Debug, Deserialize, TS)]
pub struct Room {
    #[serde(default = "lobby")]
    #[ts(as = "Option<String>", optional)]
    pub room: String,
}

fn lobby() -> String {
    "lobby".into()
}

#[derive(Debug, Deserialize, TS)]
pub struct Authenticate {
    pub token: String,
}

#[derive(Debug, Serialize, TS)]
pub struct Authenticated {
    pub user: String,
}

#[derive(Debug, Deserialize, TS)]
pub struct Send {
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, TS)]
pub struct ChatMessage {
    pub id: u32,
    pub room: String,
    pub user: String,
    pub text: String,
}

#[derive(Debug, Serialize, TS)]
pub struct Welcome {
    pub room: String,
    pub messages: usize,
}

pub type ChatCtx = Ctx<ChatServices, ChatUser, Room>;

/// The topic of one room's new messages.
pub fn room_topic(room: &str) -> String {
    format!("room:{room}")
}

/// Longest message accepted.
pub const MAX_TEXT: usize = 2000;

async fn on_connect(ctx: ChatCtx) -> Result<Welcome, ActionError> {
    let room = ctx.opening().room.clone();
    ctx.subscribe(&room_topic(&room))?;
    let messages = ctx.services().rooms.lock().expect("rooms lock").get(&room).map_or(0, Vec::len);
    Ok(Welcome { room, messages })
}

async fn authenticate(ctx: ChatCtx, input: Authenticate) -> Result<Authenticated, ActionError> {
    let Some(name) = ctx.services().tokens.get(&input.token).cloned() else {
        return Err(ActionError::new("bad_token", "unknown token"));
    };
    ctx.set_session(ChatUser { name: name.clone() });
    Ok(Authenticated { user: name })
}

async fn send(ctx: ChatCtx, input: Send) -> Result<ChatMessage, ActionError> {
    let text = input.text.trim();
    if text.is_empty() || text.len() > MAX_TEXT {
        return Err(ActionError::invalid_input(format!("text must be 1 to {MAX_TEXT} bytes")));
    }
    let user = ctx.session().ok_or_else(ActionError::unauthenticated)?.name.clone();
    let room = ctx.opening().room.clone();
    let message = {
        let mut rooms = ctx.services().rooms.lock().expect("rooms lock");
        let messages = rooms.entry(room.clone()).or_default();
        let message =
            ChatMessage { id: messages.len() as u32 + 1, room: room.clone(), user, text: text.to_owned() };
        messages.push(message.clone());
        message
    };
    ctx.event_hub().publish(&room_topic(&room), &message)?;
    Ok(message)
}

async fn history(ctx: ChatCtx, (): ()) -> Result<Vec<ChatMessage>, ActionError> {
    let rooms = ctx.services().rooms.lock().expect("rooms lock");
    Ok(rooms.get(&ctx.opening().room).cloned().unwrap_or_default())
}

/// The `chat` channel.
pub fn chat_channel() -> Channel<ChatServices, ChatUser, Room> {
    Channel::new("chat")
        .tags(["chat"])
        .ts_opening()
        .ts_on_connect(on_connect)
        .ts_topic::<ChatMessage>("room:*")
        .ts_action("authenticate", Action::new(authenticate).auth(false))
        .ts_action("send", Action::new(send))
        .ts_action("history", Action::new(history).auth(false))
}

/// Everything this application wires.
pub fn channels(services: ChatServices) -> Channels<ChatServices, ChatUser> {
    Channels::new(services).wire(chat_channel())
}
