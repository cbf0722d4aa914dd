//! Everything the console says, in Spanish, English and Portuguese (Brazil), and how numbers and
//! money are written in each. Texts are enum variants, so a page cannot name a text that has no
//! translation, and a new text cannot be added without all three.

use crate::domain::campaign::{CampaignState, Exclusion};
use crate::domain::reason::Reason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locale {
    Es,
    En,
    PtBr,
}

impl Locale {
    pub const ALL: [Locale; 3] = [Locale::Es, Locale::En, Locale::PtBr];

    /// The BCP 47 tag (the page's `lang`, and what the browser formats dates with).
    pub fn tag(self) -> &'static str {
        match self {
            Locale::Es => "es",
            Locale::En => "en",
            Locale::PtBr => "pt-BR",
        }
    }

    /// Its name in itself, for the language switch.
    pub fn name(self) -> &'static str {
        match self {
            Locale::Es => "Español",
            Locale::En => "English",
            Locale::PtBr => "Português (Brasil)",
        }
    }

    /// A language tag or its primary subtag (`es-MX`, `pt`, `EN`); None for other languages.
    pub fn parse(raw: &str) -> Option<Locale> {
        let primary = raw.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        match primary.as_str() {
            "es" => Some(Locale::Es),
            "en" => Some(Locale::En),
            "pt" => Some(Locale::PtBr),
            _ => None,
        }
    }

    /// The browser's first language we speak, by `Accept-Language` weight; Spanish otherwise
    /// (most of pregon's users write it).
    pub fn negotiate(accept_language: &str) -> Locale {
        let mut offers: Vec<(f32, Locale)> = accept_language
            .split(',')
            .filter_map(|part| {
                let mut pieces = part.split(';');
                let locale = Locale::parse(pieces.next()?)?;
                let q = pieces
                    .find_map(|p| p.trim().strip_prefix("q="))
                    .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())?;
                (q > 0.0).then_some((q, locale))
            })
            .collect();
        // Stable: among equal weights the first listed wins.
        offers.sort_by(|a, b| b.0.total_cmp(&a.0));
        offers.first().map_or(Locale::Es, |(_, l)| *l)
    }

    fn separators(self) -> (char, char) {
        match self {
            Locale::En => (',', '.'),
            Locale::Es | Locale::PtBr => ('.', ','),
        }
    }

    /// A count with the locale's digit grouping: 1,234,567 or 1.234.567.
    pub fn number(self, n: i64) -> String {
        let digits = n.unsigned_abs().to_string();
        let (group, _) = self.separators();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(group);
            }
            out.push(c);
        }
        if n < 0 { format!("-{out}") } else { out }
    }

    /// A decimal with `places` digits after the locale's decimal mark.
    pub fn decimal(self, x: f64, places: usize) -> String {
        let fixed = format!("{:.*}", places, x.abs());
        let (whole, fraction) = fixed.split_once('.').unwrap_or((&fixed, ""));
        let whole: i64 = whole.parse().unwrap_or(0);
        let (_, mark) = self.separators();
        let sign = if x < 0.0 && fixed.chars().any(|c| c.is_ascii_digit() && c != '0') {
            "-"
        } else {
            ""
        };
        if fraction.is_empty() {
            format!("{sign}{}", self.number(whole))
        } else {
            format!("{sign}{}{mark}{fraction}", self.number(whole))
        }
    }

    /// An amount of money with its ISO currency code, to the cent (below ten cents: to a
    /// hundredth of a cent, as rate cards price single messages).
    pub fn money(self, amount: f64, currency: &str) -> String {
        let places = if amount != 0.0 && amount.abs() < 0.1 {
            4
        } else {
            2
        };
        match self {
            Locale::En => format!("{currency} {}", self.decimal(amount, places)),
            Locale::Es | Locale::PtBr => format!("{} {currency}", self.decimal(amount, places)),
        }
    }

    /// A share (0.0–1.0) as a percentage with one decimal.
    pub fn percent(self, share: f64) -> String {
        format!("{} %", self.decimal(share * 100.0, 1))
    }
}

macro_rules! texts {
    ($($name:ident => ($es:expr, $en:expr, $pt:expr),)*) => {
        /// A text of the console; `.get(locale)` says it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Text { $($name,)* }

        impl Text {
            pub const ALL: &[Text] = &[$(Text::$name,)*];

            pub fn get(self, locale: Locale) -> &'static str {
                match (self, locale) {
                    $(
                        (Text::$name, Locale::Es) => $es,
                        (Text::$name, Locale::En) => $en,
                        (Text::$name, Locale::PtBr) => $pt,
                    )*
                }
            }
        }
    };
}

texts! {
    Console => ("Consola", "Console", "Console"),
    SkipToContent => ("Ir al contenido", "Skip to content", "Pular para o conteúdo"),
    Campaigns => ("Campañas", "Campaigns", "Campanhas"),
    Senders => ("Números", "Senders", "Números"),
    Language => ("Idioma", "Language", "Idioma"),
    Change => ("Cambiar", "Change", "Alterar"),
    SignedInAs => ("Sesión de", "Signed in as", "Conectado como"),
    SignOut => ("Cerrar sesión", "Sign out", "Sair"),
    SignOutEverywhere => ("Cerrar sesión en todos los dispositivos", "Sign out everywhere", "Sair de todos os dispositivos"),
    SignInTitle => ("Iniciar sesión en pregon", "Sign in to pregon", "Entrar no pregon"),
    Email => ("Correo electrónico", "Email", "E-mail"),
    Password => ("Contraseña", "Password", "Senha"),
    SignIn => ("Iniciar sesión", "Sign in", "Entrar"),
    BadCredentials => ("Correo o contraseña incorrectos.", "Wrong email or password.", "E-mail ou senha incorretos."),
    TooManyAttempts => ("Demasiados intentos fallidos. Espera unos minutos y vuelve a intentarlo.", "Too many failed attempts. Wait a few minutes and try again.", "Muitas tentativas falharam. Aguarde alguns minutos e tente de novo."),
    FormExpired => ("El formulario caducó: vuelve a cargar la página e inténtalo de nuevo.", "The form expired: reload the page and try again.", "O formulário expirou: recarregue a página e tente de novo."),
    Forbidden => ("Tu rol no permite hacer esto.", "Your role does not allow this.", "Sua função não permite fazer isto."),
    NotFound => ("No existe, o no tienes acceso.", "It does not exist, or you have no access to it.", "Não existe, ou você não tem acesso."),
    Back => ("Volver", "Back", "Voltar"),
    Name => ("Nombre", "Name", "Nome"),
    State => ("Estado", "State", "Estado"),
    Progress => ("Avance", "Progress", "Progresso"),
    SenderPool => ("Números que envían", "Sender pool", "Números que enviam"),
    CreatedBy => ("Creada por", "Created by", "Criada por"),
    Started => ("Inicio", "Started", "Início"),
    Finished => ("Fin", "Finished", "Fim"),
    NoCampaigns => ("Aún no hay campañas.", "No campaigns yet.", "Ainda não há campanhas."),
    Unknown => ("desconocido", "unknown", "desconhecido"),
    Recipients => ("Destinatarios", "Recipients", "Destinatários"),
    Template => ("Plantilla", "Template", "Modelo"),
    Category => ("Categoría", "Category", "Categoria"),
    Sent => ("Enviados", "Sent", "Enviadas"),
    Delivered => ("Entregados", "Delivered", "Entregues"),
    Read => ("Leídos", "Read", "Lidas"),
    Replied => ("Respondidos", "Replied", "Respondidas"),
    Failed => ("Fallidos", "Failed", "Com falha"),
    ToSend => ("Por enviar", "Still to send", "A enviar"),
    Excluded => ("Excluidos", "Excluded", "Excluídos"),
    Funnel => ("Embudo", "Funnel", "Funil"),
    SendRate => ("Ritmo de envío", "Send rate", "Ritmo de envio"),
    PerSecond => ("mensajes/s", "messages/s", "mensagens/s"),
    Eta => ("Tiempo restante estimado", "Estimated time left", "Tempo restante estimado"),
    LiveChart => ("Mensajes finalizados en el tiempo", "Messages finished over time", "Mensagens finalizadas ao longo do tempo"),
    UpdatesLive => ("Se actualiza solo, sin recargar la página.", "Updates by itself, without reloading the page.", "Atualiza sozinho, sem recarregar a página."),
    PausedBecause => ("En pausa porque", "Paused because", "Pausada porque"),
    PausedByPerson => ("Una persona la pausó", "A person paused it", "Uma pessoa a pausou"),
    Actions => ("Acciones", "Actions", "Ações"),
    Pause => ("Pausar", "Pause", "Pausar"),
    Resume => ("Reanudar", "Resume", "Retomar"),
    Cancel => ("Cancelar campaña", "Cancel campaign", "Cancelar campanha"),
    CancelConfirm => ("¿Cancelar la campaña? Lo que no se envió no se enviará.", "Cancel the campaign? What was not sent will not be sent.", "Cancelar a campanha? O que não foi enviado não será enviado."),
    CancelConfirmAgain => ("Confirmo: cancelar definitivamente", "I confirm: cancel for good", "Confirmo: cancelar definitivamente"),
    Cancelled => ("La campaña fue cancelada.", "The campaign was cancelled.", "A campanha foi cancelada."),
    Estimate => ("Estimación antes de enviar", "Estimate before sending", "Estimativa antes de enviar"),
    Eligible => ("Destinatarios que recibirán el mensaje", "Recipients who will get the message", "Destinatários que receberão a mensagem"),
    Exclusions => ("Exclusiones por motivo", "Exclusions by reason", "Exclusões por motivo"),
    EstimatedCost => ("Costo estimado", "Estimated cost", "Custo estimado"),
    BilledCost => ("Costo facturado hasta ahora", "Billed so far", "Custo cobrado até agora"),
    Unpriced => ("sin precio en la tarifa", "not on the rate card", "sem preço na tabela"),
    Launch => ("Lanzar", "Launch", "Lançar"),
    LaunchConfirm => ("Confirmo el envío a", "I confirm sending to", "Confirmo o envio para"),
    LaunchFor => ("por un costo estimado de", "for an estimated", "por um custo estimado de"),
    Results => ("Resultados", "Results", "Resultados"),
    FailuresByReason => ("Fallos por motivo", "Failures by reason", "Falhas por motivo"),
    Reason => ("Motivo", "Reason", "Motivo"),
    Count => ("Cantidad", "Count", "Quantidade"),
    WhatItMeans => ("Qué significa y qué hacer", "What it means and what to do", "O que significa e o que fazer"),
    NoFailures => ("Ningún fallo.", "No failures.", "Nenhuma falha."),
    DownloadFailures => ("Descargar fallos (CSV)", "Download failures (CSV)", "Baixar falhas (CSV)"),
    DownloadExclusions => ("Descargar exclusiones (CSV)", "Download exclusions (CSV)", "Baixar exclusões (CSV)"),
    RetryFailures => ("Reintentar los fallos que aún pueden salir bien", "Retry the failures that can still succeed", "Tentar de novo as falhas que ainda podem dar certo"),
    Retryable => ("se pueden reintentar", "can be retried", "podem ser tentadas de novo"),
    Requeued => ("mensajes vueltos a la cola", "messages queued again", "mensagens colocadas de volta na fila"),
    Replies => ("Respuestas", "Replies", "Respostas"),
    NoReplies => ("Aún no hay respuestas.", "No replies yet.", "Ainda não há respostas."),
    From => ("De", "From", "De"),
    Answer => ("Respuesta", "Answer", "Resposta"),
    AnsweredMessage => ("Mensaje respondido", "Message answered", "Mensagem respondida"),
    When => ("Cuándo", "When", "Quando"),
    History => ("Historial", "History", "Histórico"),
    Number => ("Número", "Number", "Número"),
    Tier => ("Límite (destinatarios/24 h)", "Tier (recipients/24 h)", "Limite (destinatários/24 h)"),
    Used24h => ("Usado en 24 h", "Used in 24 h", "Usado em 24 h"),
    Quality => ("Calidad", "Quality", "Qualidade"),
    Status => ("Estado", "Status", "Status"),
    Mps => ("Mensajes/s (tope)", "Messages/s (cap)", "Mensagens/s (limite)"),
    Unlimited => ("ilimitado", "unlimited", "ilimitado"),
    SenderPaused => ("en pausa", "paused", "pausado"),
    NoSenders => ("No hay números registrados.", "No senders registered.", "Nenhum número registrado."),
    Contacts => ("Contactos", "Contacts", "Contatos"),
    ImportContacts => ("Importar contactos (CSV)", "Import contacts (CSV)", "Importar contatos (CSV)"),
    CsvFile => ("Archivo CSV con una fila de encabezado", "CSV file with a header row", "Arquivo CSV com uma linha de cabeçalho"),
    Upload => ("Subir y revisar", "Upload and review", "Enviar e revisar"),
    MapColumns => ("Qué contiene cada columna", "What each column holds", "O que cada coluna contém"),
    FirstRows => ("Primeras filas del archivo", "First rows of the file", "Primeiras linhas do arquivo"),
    PhoneColumn => ("Columna del teléfono", "Phone column", "Coluna do telefone"),
    NameColumn => ("Columna del nombre", "Name column", "Coluna do nome"),
    LanguageColumn => ("Columna del idioma", "Language column", "Coluna do idioma"),
    AttributeColumns => ("Columnas a guardar como atributos (para las variables)", "Columns to keep as attributes (for variables)", "Colunas a guardar como atributos (para as variáveis)"),
    TagsForAll => ("Etiquetas para todas las filas (separadas por comas)", "Tags for every row (comma-separated)", "Etiquetas para todas as linhas (separadas por vírgulas)"),
    ConsentColumn => ("Columna del consentimiento (sí/no)", "Consent column (yes/no)", "Coluna do consentimento (sim/não)"),
    EvidenceColumn => ("Columna de la evidencia del consentimiento", "Consent evidence column", "Coluna da evidência do consentimento"),
    ConsentSource => ("Origen del consentimiento", "Where the consent was given", "Origem do consentimento"),
    ListName => ("Guardar como lista con el nombre", "Save as a list named", "Salvar como lista com o nome"),
    NoColumn => ("— ninguna —", "— none —", "— nenhuma —"),
    Import => ("Importar", "Import", "Importar"),
    ImportReport => ("Resultado de la importación", "Import report", "Resultado da importação"),
    Rows => ("Filas", "Rows", "Linhas"),
    Created => ("Creados", "Created", "Criados"),
    Updated => ("Actualizados", "Updated", "Atualizados"),
    RowErrors => ("Filas con errores", "Rows with errors", "Linhas com erros"),
    Row => ("Fila", "Row", "Linha"),
    Field => ("Campo", "Field", "Campo"),
    Value => ("Valor", "Value", "Valor"),
    DownloadErrors => ("Descargar todos los errores (CSV)", "Download every error (CSV)", "Baixar todos os erros (CSV)"),
    NewCampaign => ("Nueva campaña", "New campaign", "Nova campanha"),
    Audience => ("Audiencia", "Audience", "Público"),
    SavedList => ("Una lista guardada", "A saved list", "Uma lista salva"),
    OrTags => ("o contactos con alguna de estas etiquetas (separadas por comas)", "or contacts with any of these tags (comma-separated)", "ou contatos com alguma destas etiquetas (separadas por vírgulas)"),
    ChooseTemplate => ("Plantilla aprobada", "Approved template", "Modelo aprovado"),
    Next => ("Siguiente", "Next", "Próximo"),
    Variables => ("Variables de la plantilla", "Template variables", "Variáveis do modelo"),
    NoVariables => ("Esta plantilla no tiene variables.", "This template has no variables.", "Este modelo não tem variáveis."),
    FromContact => ("Dato del contacto", "Contact field", "Dado do contato"),
    FixedValue => ("Valor fijo para todos", "Fixed value for everyone", "Valor fixo para todos"),
    ValueOrDefault => ("Valor fijo, o valor si el dato falta", "Fixed value, or the value when the field is missing", "Valor fixo, ou o valor quando o dado falta"),
    PreviewFor => ("Vista previa para", "Preview for", "Prévia para"),
    NoSample => ("La audiencia está vacía: no hay a quién mostrar.", "The audience is empty: nobody to show it for.", "O público está vazio: não há para quem mostrar."),
    NoComponents => ("Sincroniza las plantillas para ver su texto.", "Sync the templates to see their text.", "Sincronize os modelos para ver o texto."),
    UpdatePreview => ("Actualizar la vista previa", "Update the preview", "Atualizar a prévia"),
    Schedule => ("Cuándo", "When", "Quando"),
    StartAt => ("Empezar (en tu hora local; vacío: al lanzar)", "Start (your local time; empty: at launch)", "Começar (no seu horário local; vazio: ao lançar)"),
    QuietFrom => ("Horario de silencio desde (hora de cada destinatario)", "Quiet hours from (each recipient's time)", "Horário de silêncio de (hora de cada destinatário)"),
    QuietUntil => ("hasta", "until", "até"),
    CreateDraft => ("Crear borrador y ver la estimación", "Create the draft and see the estimate", "Criar rascunho e ver a estimativa"),
    Templates => ("Plantillas", "Templates", "Modelos"),
    NoTemplates => ("No hay plantillas: sincronízalas desde Meta.", "No templates: sync them from Meta.", "Nenhum modelo: sincronize-os da Meta."),
    Changes => ("Cambios de estado y categoría", "Status and category changes", "Mudanças de status e categoria"),
    NoChanges => ("sin cambios", "no changes", "sem mudanças"),
    Warnings => ("Avisos antes de lanzar", "Warnings before launching", "Avisos antes de lançar"),
    WarnTierShort => ("no alcanza su límite de 24 h para toda la audiencia; el resto espera a que se libere cupo", "has not enough of its 24 h limit left for the whole audience; the rest waits for room", "não tem limite de 24 h suficiente para todo o público; o resto espera por espaço"),
    WarnQuality => ("tiene calidad", "has quality", "tem qualidade"),
    WarnTemplatePaused => ("Meta pausó la plantilla: nada se enviará hasta que la reactive.", "Meta paused the template: nothing is sent until it is reactivated.", "A Meta pausou o modelo: nada será enviado até a reativação."),
    WarnCategoryChanged => ("La categoría de la plantilla cambió desde que se creó la campaña (cambia el precio):", "The template's category changed since the campaign was created (it changes the price):", "A categoria do modelo mudou desde que a campanha foi criada (muda o preço):"),
    CostByCountry => ("Costo por país", "Cost by country", "Custo por país"),
    Country => ("País", "Country", "País"),
    Price => ("Precio", "Price", "Preço"),
    Search => ("Buscar", "Search", "Buscar"),
    SearchHint => ("Número o etiqueta", "Number or tag", "Número ou etiqueta"),
    NoContacts => ("Ningún contacto.", "No contacts.", "Nenhum contato."),
    Tags => ("Etiquetas", "Tags", "Etiquetas"),
    Attributes => ("Atributos", "Attributes", "Atributos"),
    ConsentNow => ("Consentimiento actual", "Consent now", "Consentimento atual"),
    ConsentHistory => ("Historial de consentimiento", "Consent history", "Histórico de consentimento"),
    Purpose => ("Para", "Purpose", "Para"),
    Action => ("Acción", "Action", "Ação"),
    Source => ("Origen", "Source", "Origem"),
    Evidence => ("Evidencia", "Evidence", "Evidência"),
    Actor => ("Quién", "By", "Quem"),
    OptIn => ("Acepta (opt-in)", "Opt in", "Aceita (opt-in)"),
    OptOut => ("Baja (opt-out)", "Opt out", "Descadastro (opt-out)"),
    NotRecorded => ("sin registro", "not recorded", "sem registro"),
    RecordConsent => ("Registrar consentimiento", "Record consent", "Registrar consentimento"),
    EvidenceHint => ("Qué aceptó la persona y cómo (obligatorio para un opt-in)", "What the person agreed to, and how (required for an opt-in)", "O que a pessoa aceitou e como (obrigatório para um opt-in)"),
    Suppression => ("Supresión", "Suppression", "Supressão"),
    NotSuppressed => ("No está suprimido.", "Not suppressed.", "Não está suprimido."),
    LiftSuppression => ("Quitar la supresión", "Lift the suppression", "Remover a supressão"),
    Recorded => ("Registrado.", "Recorded.", "Registrado."),
    SenderShares => ("Números: parte de la audiencia y uso del límite", "Senders: share of the audience and limit use", "Números: parte do público e uso do limite"),
    Share => ("Destinatarios asignados", "Recipients given", "Destinatários atribuídos"),
    NewCampaignForList => ("Crear una campaña para esta lista", "Create a campaign for this list", "Criar uma campanha para esta lista"),
}

/// A contact import's row error in words.
pub fn import_error(code: &str, l: Locale) -> &str {
    match (code, l) {
        ("invalid_phone_number", Locale::Es) => "Número de teléfono inválido",
        ("invalid_phone_number", Locale::En) => "Invalid phone number",
        ("invalid_phone_number", Locale::PtBr) => "Número de telefone inválido",
        ("duplicate", Locale::Es) => "Número repetido en el archivo",
        ("duplicate", Locale::En) => "Number repeated in the file",
        ("duplicate", Locale::PtBr) => "Número repetido no arquivo",
        ("bad_column", Locale::Es) => "Columna con un valor que no sirve o faltante",
        ("bad_column", Locale::En) => "A column with an unusable or missing value",
        ("bad_column", Locale::PtBr) => "Coluna com um valor inutilizável ou ausente",
        (other, _) => other,
    }
}

/// A campaign state in words.
pub fn state(state: CampaignState, l: Locale) -> &'static str {
    use CampaignState::*;
    match (state, l) {
        (Draft, Locale::Es) => "Borrador",
        (Draft, Locale::En) => "Draft",
        (Draft, Locale::PtBr) => "Rascunho",
        (Scheduled, Locale::Es) => "Programada",
        (Scheduled, Locale::En) => "Scheduled",
        (Scheduled, Locale::PtBr) => "Agendada",
        (Running, Locale::Es) => "Enviando",
        (Running, Locale::En) => "Sending",
        (Running, Locale::PtBr) => "Enviando",
        (Paused, Locale::Es) => "En pausa",
        (Paused, Locale::En) => "Paused",
        (Paused, Locale::PtBr) => "Pausada",
        (Completed, Locale::Es) => "Terminada",
        (Completed, Locale::En) => "Completed",
        (Completed, Locale::PtBr) => "Concluída",
        (Cancelled, Locale::Es) => "Cancelada",
        (Cancelled, Locale::En) => "Cancelled",
        (Cancelled, Locale::PtBr) => "Cancelada",
    }
}

/// Why a recipient was left out, in words.
pub fn exclusion(e: Exclusion, l: Locale) -> &'static str {
    use Exclusion::*;
    match (e, l) {
        (InvalidNumber, Locale::Es) => "Número inválido",
        (InvalidNumber, Locale::En) => "Invalid number",
        (InvalidNumber, Locale::PtBr) => "Número inválido",
        (Duplicate, Locale::Es) => "Repetido en la audiencia",
        (Duplicate, Locale::En) => "Repeated in the audience",
        (Duplicate, Locale::PtBr) => "Repetido no público",
        (NoOptIn, Locale::Es) => "Sin consentimiento (opt-in)",
        (NoOptIn, Locale::En) => "No opt-in",
        (NoOptIn, Locale::PtBr) => "Sem consentimento (opt-in)",
        (OptedOut, Locale::Es) => "Se dio de baja",
        (OptedOut, Locale::En) => "Opted out",
        (OptedOut, Locale::PtBr) => "Descadastrado",
        (Suppressed, Locale::Es) => "Suprimido (no usa WhatsApp o bloqueado)",
        (Suppressed, Locale::En) => "Suppressed (not on WhatsApp, or blocked)",
        (Suppressed, Locale::PtBr) => "Suprimido (sem WhatsApp ou bloqueado)",
        (MissingVariable, Locale::Es) => "Falta una variable de la plantilla",
        (MissingVariable, Locale::En) => "A template variable is missing",
        (MissingVariable, Locale::PtBr) => "Falta uma variável do modelo",
        (UsMarketing, Locale::Es) => "Número de EE. UU. (Meta no entrega marketing)",
        (UsMarketing, Locale::En) => "US number (Meta does not deliver marketing)",
        (UsMarketing, Locale::PtBr) => "Número dos EUA (a Meta não entrega marketing)",
    }
}

/// Why a message failed, waits or a campaign paused, and where it helps what to do.
pub fn reason(r: Reason, l: Locale) -> &'static str {
    use Reason::*;
    let (es, pt) = match r {
        RecipientSuppressed => (
            "Meta informó que este número no usa WhatsApp (131026); queda suprimido. Corrige el número o quítalo de la lista.",
            "A Meta informou que este número não usa WhatsApp (131026); ele fica suprimido. Corrija o número ou remova-o da lista.",
        ),
        RecipientOptedOut => (
            "La persona se dio de baja de este tipo de mensajes. No la vuelvas a incluir.",
            "A pessoa se descadastrou deste tipo de mensagem. Não a inclua de novo.",
        ),
        NoMarketingOptIn => (
            "El marketing necesita un consentimiento registrado. Importa la evidencia del opt-in.",
            "Marketing precisa de um consentimento registrado. Importe a evidência do opt-in.",
        ),
        OutsideServiceWindow => (
            "Fuera de la ventana de 24 h de atención solo se permiten plantillas. Envía una plantilla.",
            "Fora da janela de 24 h de atendimento só modelos são permitidos. Envie um modelo.",
        ),
        SendOutcomeUnknown => (
            "El envío pudo llegar a Meta antes de que el proceso se detuviera; no se reenvía para no duplicarlo.",
            "O envio pode ter chegado à Meta antes de o processo parar; não é reenviado para não duplicar.",
        ),
        TemplateUnknown => (
            "La plantilla no está en el registro. Sincroniza las plantillas.",
            "O modelo não está no registro. Sincronize os modelos.",
        ),
        TemplateDisabled => (
            "Meta desactivó la plantilla. Crea otra y vuelve a enviarla a revisión.",
            "A Meta desativou o modelo. Crie outro e envie para revisão.",
        ),
        TemplateNotApproved => (
            "La plantilla no está aprobada. Espera la aprobación de Meta.",
            "O modelo não está aprovado. Aguarde a aprovação da Meta.",
        ),
        TemplatePaused => (
            "Meta pausó la plantilla por baja calidad. Espera a que la reactive o usa otra.",
            "A Meta pausou o modelo por baixa qualidade. Aguarde a reativação ou use outro.",
        ),
        MessagingLimitReached => (
            "El número usó su límite de destinatarios de las últimas 24 h. Sigue solo cuando se libera cupo.",
            "O número usou seu limite de destinatários das últimas 24 h. Continua sozinho quando houver espaço.",
        ),
        RecipientMarketingCap => (
            "Meta limita cuánto marketing recibe cada persona (131049); se intenta de nuevo un día después.",
            "A Meta limita quanto marketing cada pessoa recebe (131049); tenta-se de novo um dia depois.",
        ),
        PairRate => (
            "Demasiados mensajes a esta persona en poco tiempo; se espacian.",
            "Mensagens demais para esta pessoa em pouco tempo; são espaçadas.",
        ),
        QuietHours => (
            "Espera el fin del horario de silencio de la campaña en la zona de la persona.",
            "Aguarda o fim do horário de silêncio da campanha no fuso da pessoa.",
        ),
        Retrying => (
            "Un fallo temporal; se intenta de nuevo tras una pausa.",
            "Uma falha temporária; tenta-se de novo após uma pausa.",
        ),
        Throttled => (
            "Meta pidió bajar el ritmo; se intenta de nuevo tras una pausa.",
            "A Meta pediu para reduzir o ritmo; tenta-se de novo após uma pausa.",
        ),
        AttemptsExhausted => (
            "Todos los intentos fallaron con errores temporales. Reintentar puede funcionar.",
            "Todas as tentativas falharam com erros temporários. Tentar de novo pode funcionar.",
        ),
        ThrottledTooOften => (
            "Meta frenó este mensaje demasiadas veces. Reintenta más tarde.",
            "A Meta segurou esta mensagem vezes demais. Tente de novo mais tarde.",
        ),
        RedeliveredTooOften => (
            "Los procesos se detuvieron varias veces mientras lo enviaban. Revisa los workers.",
            "Os processos pararam várias vezes durante o envio. Verifique os workers.",
        ),
        RecipientUnreachable => (
            "El número no usa WhatsApp (131026). Corrige el número o quítalo de la lista.",
            "O número não usa WhatsApp (131026). Corrija o número ou remova-o da lista.",
        ),
        RecipientStoppedMarketing => (
            "La persona dejó de recibir marketing de esta empresa (131050); queda dada de baja.",
            "A pessoa parou de receber marketing desta empresa (131050); fica descadastrada.",
        ),
        RejectedByCloudApi => (
            "Meta rechazó el mensaje tal como está: revisa la plantilla y sus variables.",
            "A Meta recusou a mensagem como está: revise o modelo e suas variáveis.",
        ),
        ExperimentHoldout => (
            "Meta retuvo el mensaje por un experimento (130472). No se cobra; no hace falta hacer nada.",
            "A Meta reteve a mensagem por um experimento (130472). Não é cobrada; não é preciso fazer nada.",
        ),
        Undelivered => (
            "Meta no pudo entregar el mensaje (teléfono apagado o sin conexión por mucho tiempo). Reintentar puede funcionar.",
            "A Meta não conseguiu entregar a mensagem (telefone desligado ou sem conexão por muito tempo). Tentar de novo pode funcionar.",
        ),
        EnqueuePublishFailed => (
            "El mensaje no se pudo encolar. Revisa RabbitMQ.",
            "A mensagem não pôde ser enfileirada. Verifique o RabbitMQ.",
        ),
        CampaignPaused => ("La campaña está en pausa.", "A campanha está pausada."),
        CampaignCancelled => ("La campaña fue cancelada.", "A campanha foi cancelada."),
        CampaignEndBy => (
            "La campaña llegó a su hora límite.",
            "A campanha chegou ao seu horário limite.",
        ),
        RetryRequested => (
            "Vuelto a la cola por un reintento de fallos.",
            "Colocado de volta na fila por uma nova tentativa das falhas.",
        ),
        SenderUnavailable => (
            "El número está en pausa o desconectado. Revisa su estado en Meta.",
            "O número está pausado ou desconectado. Verifique seu status na Meta.",
        ),
        SenderQualityRed => (
            "La calidad del número está en ROJO; el marketing espera a que mejore.",
            "A qualidade do número está VERMELHA; o marketing aguarda a melhora.",
        ),
        MarketingPaused => (
            "El marketing de este número está retenido tras un aviso de spam de Meta (131048).",
            "O marketing deste número está retido após um aviso de spam da Meta (131048).",
        ),
        StateUnavailable => (
            "No se pudo leer Redis; se intenta de nuevo.",
            "Não foi possível ler o Redis; tenta-se de novo.",
        ),
        StateRebuilding => (
            "Redis perdió sus datos y se está reconstruyendo; se intenta de nuevo.",
            "O Redis perdeu seus dados e está sendo reconstruído; tenta-se de novo.",
        ),
        StoreUnavailable => (
            "PostgreSQL no puede registrar resultados; se intenta de nuevo.",
            "O PostgreSQL não consegue registrar resultados; tenta-se de novo.",
        ),
    };
    match l {
        Locale::Es => es,
        Locale::En => r.message(),
        Locale::PtBr => pt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_language_is_negotiated_by_weight() {
        for (header, want) in [
            ("", Locale::Es),
            ("fr-FR", Locale::Es),
            ("pt-BR,pt;q=0.9,en;q=0.8", Locale::PtBr),
            ("en-US,en;q=0.9", Locale::En),
            ("fr;q=1, en;q=0.5, es-MX;q=0.7", Locale::Es),
            ("es;q=0, en", Locale::En),
            ("de, PT", Locale::PtBr),
            ("en;q=abc, pt;q=0.1", Locale::PtBr),
        ] {
            assert_eq!(Locale::negotiate(header), want, "{header:?}");
        }
    }

    #[test]
    fn numbers_and_money_follow_the_locale() {
        let cases: &[(Locale, i64, &str)] = &[
            (Locale::En, 0, "0"),
            (Locale::En, 999, "999"),
            (Locale::En, 1_000, "1,000"),
            (Locale::Es, 1_234_567, "1.234.567"),
            (Locale::PtBr, -12_345, "-12.345"),
        ];
        for (l, n, want) in cases {
            assert_eq!(l.number(*n), *want);
        }
        assert_eq!(Locale::En.money(1234.5, "USD"), "USD 1,234.50");
        assert_eq!(Locale::Es.money(1234.5, "USD"), "1.234,50 USD");
        assert_eq!(Locale::PtBr.money(0.1525, "USD"), "0,15 USD");
        assert_eq!(Locale::Es.money(0.0305, "USD"), "0,0305 USD");
        assert_eq!(Locale::En.money(0.0, "USD"), "USD 0.00");
        assert_eq!(Locale::Es.percent(0.5), "50,0 %");
        assert_eq!(Locale::En.decimal(-0.0001, 2), "0.00");
        assert_eq!(Locale::En.decimal(-2.5, 1), "-2.5");
    }

    #[test]
    fn every_text_is_said_in_every_language() {
        for text in Text::ALL {
            for l in Locale::ALL {
                assert!(!text.get(l).trim().is_empty(), "{text:?} in {l:?}");
            }
        }
        for r in Reason::ALL {
            for l in Locale::ALL {
                assert!(!reason(r, l).is_empty());
            }
        }
        assert_eq!(Locale::parse("pt_BR"), Some(Locale::PtBr));
        assert_eq!(Locale::parse("de"), None);
    }
}
