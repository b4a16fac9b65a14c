//! `[whatsapp]` and `[[modems]]`: the two channels' settings.

use super::*;

/// `[whatsapp]`
pub(super) fn whatsapp(
    v: &mut V<'_>,
    w: &raw::RawWhatsApp,
    warnings: &mut Vec<String>,
) -> WhatsAppConfig {
    let enabled = w.enabled.unwrap_or(false);
    let token = v.secret(
        "whatsapp.token_file",
        &w.token_file,
        "whatsapp-token",
        warnings,
    );
    let app_secret = v.secret(
        "whatsapp.app_secret_file",
        &w.app_secret_file,
        "whatsapp-app-secret",
        warnings,
    );
    let verify_token = v.secret(
        "whatsapp.verify_token_file",
        &w.verify_token_file,
        "whatsapp-verify-token",
        warnings,
    );
    let api_base = w
        .api_base
        .clone()
        .unwrap_or_else(|| "https://graph.facebook.com/v24.0".into())
        .trim_end_matches('/')
        .to_string();
    if !(api_base.starts_with("https://") || api_base.starts_with("http://")) {
        v.err(
            "whatsapp.api_base",
            format!("\"{api_base}\" is not an http(s) URL"),
        );
    }
    let phone_number_id = w.phone_number_id.clone().unwrap_or_default();
    let template = w.template.clone().unwrap_or_default();
    if enabled {
        whatsapp_required(v, w, token.is_some(), &phone_number_id, &template);
    }
    if let Some(px) = &w.proxy
        && !(px.starts_with("http://") || px.starts_with("https://"))
    {
        v.err(
            "whatsapp.proxy",
            format!(
                "\"{}\" must start with http:// (an HTTP CONNECT proxy)",
                mask_userinfo(px)
            ),
        );
    }
    meta_id(
        v,
        "whatsapp.business_account_id",
        &w.business_account_id,
        "a WhatsApp Business Account id",
    );
    meta_id(v, "whatsapp.app_id", &w.app_id, "a Meta app id");
    let max_rate = w.max_rate.unwrap_or(80);
    if !(1..=1000).contains(&max_rate) {
        v.err(
            "whatsapp.max_rate",
            format!("{max_rate} is out of range (1 to 1000)"),
        );
    }
    WhatsAppConfig {
        enabled,
        api_base,
        phone_number_id,
        token_path: token.as_ref().map(|t| t.1.clone()),
        token: token.map(|t| t.0),
        template,
        languages: w.languages.clone(),
        default_language: w.default_language.clone().unwrap_or_else(|| "en_US".into()),
        timeout: v.dur("whatsapp.timeout", &w.timeout, Duration::from_secs(4)),
        proxy: w.proxy.clone(),
        ca_file: v.existing_file("whatsapp.ca_file", &w.ca_file),
        max_rate: u32::try_from(max_rate).unwrap_or(80),
        circuit_cooldown: v.dur(
            "whatsapp.circuit_cooldown",
            &w.circuit_cooldown,
            Duration::from_secs(60),
        ),
        app_secret: app_secret.map(|s| s.0),
        verify_token: verify_token.map(|s| s.0),
        business_account_id: w.business_account_id.clone(),
        app_id: w.app_id.clone(),
    }
}

/// An optional id Meta hands out: digits only.
fn meta_id(v: &mut V<'_>, key: &str, id: &Option<String>, what: &str) {
    if let Some(id) = id
        && (id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()))
    {
        v.err(key, format!("\"{id}\" is not {what} (digits only)"));
    }
}

/// What `whatsapp.enabled = true` needs.
pub(super) fn whatsapp_required(
    v: &mut V<'_>,
    w: &raw::RawWhatsApp,
    has_token: bool,
    phone_number_id: &str,
    template: &str,
) {
    if !has_token && w.token_file.is_none() {
        v.err(
            "whatsapp.token_file",
            "is required when whatsapp.enabled = true (or provide systemd credential \"whatsapp-token\")",
        );
    }
    if phone_number_id.is_empty() || !phone_number_id.chars().all(|c| c.is_ascii_digit()) {
        v.err(
            "whatsapp.phone_number_id",
            "is required when whatsapp.enabled = true and must be digits",
        );
    }
    if template.is_empty() {
        v.err(
            "whatsapp.template",
            "is required when whatsapp.enabled = true (the authentication template's name)",
        );
    }
}

/// `[[modems]]`: names unique; an entry without a device is skipped (after reporting).
pub(super) fn modems(
    v: &mut V<'_>,
    raw: &[raw::RawModem],
    warnings: &mut Vec<String>,
) -> Vec<ModemConfig> {
    let mut modems = Vec::new();
    let mut names = HashSet::new();
    for (i, m) in raw.iter().enumerate() {
        let name = m.name.clone().unwrap_or_else(|| format!("modem{i}"));
        if !names.insert(name.clone()) {
            v.err(
                format!("modems[{i}].name"),
                format!("\"{name}\" is used by another modem"),
            );
        }
        if let Some(modem) = modem(v, i, name, m, warnings) {
            modems.push(modem);
        }
    }
    modems
}

/// One `[[modems]]` entry, the `i`th, called `name`.
pub(super) fn modem(
    v: &mut V<'_>,
    i: usize,
    name: String,
    m: &raw::RawModem,
    warnings: &mut Vec<String>,
) -> Option<ModemConfig> {
    let at = |k: &str| format!("modems[{i}].{k}");
    let Some(device) = m.device.clone() else {
        v.err(
            at("device"),
            "is required (prefer a /dev/serial/by-id/... path)",
        );
        return None;
    };
    let baud = m.baud.unwrap_or(115_200);
    if ![
        9600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600,
    ]
    .contains(&baud)
    {
        v.err(at("baud"), format!("{baud} is not a standard baud rate"));
    }
    if let Some(smsc) = &m.smsc
        && !(smsc.starts_with('+')
            && smsc.len() > 3
            && smsc[1..].chars().all(|c| c.is_ascii_digit()))
    {
        v.err(
            at("smsc"),
            format!("\"{smsc}\" must be an international number such as \"+491722270333\""),
        );
    }
    let pin = v
        .secret(
            &at("pin_file"),
            &m.pin_file,
            &format!("modem-{name}-pin"),
            warnings,
        )
        .map(|s| s.0);
    Some(ModemConfig {
        device: PathBuf::from(device),
        baud: u32::try_from(baud).unwrap_or(115_200),
        pin,
        smsc: m.smsc.clone(),
        status_reports: m.status_reports.unwrap_or(true),
        command_timeout: v.dur(
            &at("command_timeout"),
            &m.command_timeout,
            Duration::from_secs(5),
        ),
        send_timeout: v.dur(
            &at("send_timeout"),
            &m.send_timeout,
            Duration::from_secs(60),
        ),
        probe_interval: v.dur(
            &at("probe_interval"),
            &m.probe_interval,
            Duration::from_secs(30),
        ),
        name,
    })
}
