//! Introspection and tag selection: the description names each action's real input and output
//! types, auth and permission groups; `only_tags` keeps exactly the channels carrying a selected
//! tag, and a real server installed with them opens those and refuses the others.

mod common;

use common::TestServer;
use plexus_channels::{
    check_sync, Action, ActionDescription, ActionError, Channel, Channels, Ctx, Message, Permissions,
    TopicDescription,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

struct Services;
struct User;

#[derive(Deserialize)]
struct Room {
    #[allow(dead_code)]
    room: Option<String>,
}

#[derive(Deserialize)]
struct Post {
    text: String,
}

#[derive(Deserialize)]
struct ById {
    #[allow(dead_code)]
    id: u64,
}

#[derive(Serialize)]
struct Posted {
    text: String,
}

type FeedCtx = Ctx<Services, User, Room>;

async fn post(_: FeedCtx, input: Post) -> Result<Posted, ActionError> {
    Ok(Posted { text: input.text })
}

async fn list(_: FeedCtx, (): ()) -> Result<Vec<Posted>, ActionError> {
    Ok(Vec::new())
}

async fn delete(_: FeedCtx, _: ById) -> Result<(), ActionError> {
    Ok(())
}

async fn anything(_: FeedCtx, message: Message) -> Result<Value, ActionError> {
    Ok(json!({"echo": message.action}))
}

fn feed() -> Channel<Services, User, Room> {
    let nobody = check_sync(|_: &Services, _: &ById, _: Option<&User>| false);
    Channel::new("feed")
        .tags(["events", "feed"])
        .topic::<Posted>("feed:*")
        .action("post", Action::new(post))
        .action("list", Action::new(list).auth(false))
        .action(
            "delete",
            Action::new(delete)
                .permissions(Permissions::new().group("owner", [nobody.clone()]).group("admin", [nobody])),
        )
        .on_message(Action::new(anything).auth(false))
}

fn wired() -> Channels<Services, User> {
    Channels::new(Services)
        .wire(feed())
        .wire(Channel::<Services, User>::new("chat").tags(["chat"]).auth(false))
        .wire(Channel::<Services, User>::new("untagged").auth(false))
}

fn names(channels: &Channels<Services, User>) -> Vec<String> {
    channels.describe().into_iter().map(|c| c.name).collect()
}

#[test]
fn only_tags_keeps_the_channels_carrying_a_selected_tag() {
    assert_eq!(names(&wired()), ["chat", "feed", "untagged"]);
    assert_eq!(names(&wired().only_tags(["events"])), ["feed"]);
    assert_eq!(names(&wired().only_tags(["chat", "feed"])), ["chat", "feed"]);
    assert_eq!(names(&wired().only_tags(["nothing-has-this"])), Vec::<String>::new());
    assert_eq!(names(&wired().only_tags(Vec::<String>::new())), Vec::<String>::new());
}

#[test]
fn the_description_names_real_types_auth_and_permission_groups() {
    let described = wired().describe();
    let feed = described.iter().find(|c| c.name == "feed").expect("feed is described");
    assert_eq!(feed.tags, ["events", "feed"]);
    assert!(feed.auth, "actions need a session by default");
    assert_eq!(feed.opening, "Room");
    let action =
        |name: &str, input: &str, output: &str, session: bool, groups: &[&str], fallback| ActionDescription {
            name: name.into(),
            input: input.into(),
            output: output.into(),
            session,
            permissions: groups.iter().map(|g| g.to_string()).collect(),
            fallback,
        };
    assert_eq!(
        feed.actions,
        [
            action("delete", "ById", "()", true, &["owner", "admin"], false),
            action("list", "()", "Vec<Posted>", false, &[], false),
            action("post", "Post", "Posted", true, &[], false),
            action("*", "Message", "Value", false, &[], true),
        ]
    );
    assert_eq!(feed.actions[0].auth_label(), "session permissions=owner|admin");
    assert_eq!(feed.actions[1].auth_label(), "public");
    assert_eq!(feed.topics, [TopicDescription { topic: "feed:*".into(), event: "Posted".into() }]);
    assert!(feed.proxied.is_empty());
    let chat = described.iter().find(|c| c.name == "chat").unwrap();
    assert!(!chat.auth && chat.actions.is_empty());
    assert_eq!(chat.opening, "Map<String, Value>", "the default opening data");
}

#[tokio::test]
async fn a_server_installed_with_only_tags_opens_the_kept_channels_and_refuses_the_rest() {
    let server = TestServer::start(wired().only_tags(["events"])).await;
    let kept: Vec<&str> = server.state.typed_channels().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(kept, ["feed"], "the server keeps what it installed");
    assert_eq!(server.installed.describe(), server.state.typed_channels());

    let mut client = server.connect().await;
    assert_eq!(client.open("feed", json!({})).await["ok"], true);
    assert_eq!(client.ok("feed", "whatever", json!(1)).await, json!({"echo": "whatever"}));
    for left_out in ["chat", "untagged"] {
        let reply = client.open(left_out, json!({})).await;
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["error"]["code"], "unknown_channel", "{reply}");
    }
    client.close().await;
}
